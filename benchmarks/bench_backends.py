"""Backends and precisions of embedding (``--backend``, ``--precision``), each against PyTorch
fp32 run in the same process, on this machine's CPU.

1. End-to-end throughput of ``inference.py``'s work (``lib.matching.inference.embed_files``:
   mp3 decoding in a worker process included), full-size CLEWS (config/dvi2-clews.yaml, random
   weights; its export made first, not timed), 20 s windows every 5 s: seconds of audio per
   second, the ratio to torch fp32, and the relative difference of the embeddings
   (||z - z_torch32|| / ||z_torch32||).
2. Accuracy parity (with ``--demo runs/demo``, the folder ``demo.py`` leaves): the trained demo
   model's track-level and 20 s-window MAP on the demo's test tracks, and the top-10 agreement
   of catalogue searches of 20 s excerpts (a catalogue of the test tracks and the queries, both
   embedded by the backend, against the same with torch fp32).

    .venv/bin/python -m benchmarks.bench_backends [--demo runs/demo] [--files 4 --seconds 60]
        [--device cuda]

Each backend runs what this machine offers: torch bf16 and OpenVINO bf16 need a CPU with native
bf16 (AVX512-BF16 or AMX); ONNX Runtime runs the fp32 graph (and the int8 one) only; int8 is the
export's int8 model (``python -m lib.export --int8``), calibrated on part 1's mp3 files and on
the demo's training tracks; on a GPU (``--device cuda``,
part 1) ONNX Runtime takes TensorRT's or CUDA's execution provider when its build has one
(``onnxruntime-gpu``), OpenVINO is left out.
"""

import argparse
import os

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.bench_precision import test_tracks
from benchmarks.common import scratch_folder
from lib import retrieval, runtime, synth
from lib.audio import load_audio
from lib.checkpoint import save_checkpoint
from lib.dataset import Dataset
from lib.errors import UsageError
from lib.export import export
from lib.matching import catalogue
from lib.matching.api import Embedder
from lib.matching.inference import embed_files
from lib.model_base import build_model

BASE = ("torch", "32-true")
CANDIDATES = [
    ("torch", "32"),
    ("torch", "bf16"),
    ("torch", "16"),
    ("onnxruntime", "32"),
    ("openvino", "32"),
    ("openvino", "bf16"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
]


def export_with_int8(checkpoint, audio):
    """The export beside ``checkpoint`` with an int8 model calibrated on ``audio`` (made when
    missing)."""
    digest = runtime.file_digest(checkpoint)
    folder = runtime.export_folder_for(checkpoint, digest)
    if not (runtime.is_export(folder) and "int8" in runtime.read_info(folder)):
        export(checkpoint, folder, overwrite=True, int8_audio=audio, digest=digest)
    return folder


def engines(checkpoint, calibration_audio, device="cpu", say=print):
    """{(backend, precision): runtime.WindowModel} of what this machine runs on ``device``,
    torch fp32 first; the export of ``checkpoint`` (with its int8 model, calibrated on
    ``calibration_audio``) is made (or found) before."""
    export_with_int8(checkpoint, calibration_audio)
    found = {}
    for backend, name in CANDIDATES:
        try:
            embedder = Embedder.load(checkpoint, device=device, precision=name, backend=backend)
        except UsageError as err:
            say(f"   ({backend} {name}: {err})")
            continue
        found[(backend, embedder.precision)] = embedder.engine
    return found


def label(key):
    return f"{key[0]} {key[1]}"


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def full_clews_checkpoint(folder, seed=0):
    conf = OmegaConf.load("config/dvi2-clews.yaml")
    torch.manual_seed(seed)
    model = build_model(conf.model, sr=conf.data.samplerate).eval()
    path = os.path.join(folder, "full-clews.ckpt")
    save_checkpoint({"model": model.state_dict(), "conf": conf, "epoch": 0}, path)
    return path, sum(p.numel() for p in model.parameters())


def bench_throughput(args):
    tmp = scratch_folder("bench_backends_")
    checkpoint, size = full_clews_checkpoint(tmp)
    synth.make_corpus(
        os.path.join(tmp, "in"), works=1, versions=args.files, seconds=args.seconds, seed=0,
        formats=("mp3",),
    )
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(tmp, "in")) for f in fs)
    print(
        f"\n1. inference.py end to end, full-size CLEWS ({size:,} parameters), {len(files)} mp3 "
        f"files of {args.seconds:g} s, 20 s windows every 5 s, decoding in 1 worker process, "
        f"{os.cpu_count()} CPU cores, device {args.device}:"
    )
    rates, outputs = {}, {}
    for key, engine in engines(checkpoint, os.path.join(tmp, "in"), args.device).items():
        jobs = [(f, os.path.join(tmp, label(key), f"{i}.pt")) for i, f in enumerate(files)]
        summary = embed_files(engine, jobs, 20.0, 5.0, nworkers=1)
        rates[key] = summary["audio_seconds"] / summary["wall_seconds"]
        outputs[key] = torch.cat([torch.load(dst, weights_only=True) for _, dst in jobs]).numpy()
        print(
            f"   {label(key):>21}: {rates[key]:7.2f} s of audio per second "
            f"({rates[key] / rates[BASE]:.2f}x torch fp32), embeddings differ by "
            f"{relative(outputs[key], outputs[BASE]):.1e}"
        )


def training_audio(demo):
    """A folder of links to the demo's training tracks: what the int8 model is calibrated on
    (never the test tracks it is measured on)."""
    conf = OmegaConf.load(os.path.join(demo, "runs", "demo-clews", "configuration.yaml"))
    conf.data.path = conf.path
    train = Dataset(conf.data, "train", fullsongs=True, checks=False)
    folder = scratch_folder("bench_backends_train_")
    for i, key in enumerate(train.versions):
        source = os.path.abspath(train.filename[key])
        os.symlink(source, os.path.join(folder, f"{i:04d}{os.path.splitext(source)[1]}"))
    return folder


def track_map(engine, dataset, waveforms, win_len, hop):
    """(MAP of the test tracks against each other, (N, S, D) embeddings) with windows of
    ``win_len`` s every ``hop`` s (win_len <= 0: each whole track as one window)."""
    zs = [engine.window_embeddings(x, win_len, hop) for x in waveforms]
    width = max(len(z) for z in zs)
    z = np.zeros((len(zs), width, zs[0].shape[1]), dtype=np.float32)
    mask = np.ones((len(zs), width), dtype=bool)
    for i, one in enumerate(zs):
        z[i, : len(one)], mask[i, : len(one)] = one, False
    keys = list(dataset.versions)
    cliques = torch.tensor([dataset.clique_id[dataset.clique_of[k]] for k in keys])
    ids = torch.tensor([dataset.info[k]["id"] for k in keys])
    emb = retrieval.Embeddings(cliques, ids, torch.from_numpy(z).half(), torch.from_numpy(mask))
    _, per_query, _, _ = retrieval.evaluate(engine, emb, emb)
    return per_query["AP"].nanmean().item(), z


def top10(engine, waveforms, clips, folder):
    """The rows of the 10 closest tracks for each clip, in a catalogue of ``waveforms`` that
    ``engine`` embedded (windows of its training length every 5 s)."""
    slen = engine.train_len
    embeddings = [engine.window_embeddings(x, slen, 5.0) for x in waveforms]
    settings = {"win_len": slen, "hop_size": 5.0, "metric": engine.segment_metric,
                "redux": engine.default_redux}
    tracks = [{"id": str(i)} for i in range(len(waveforms))]
    catalogue.build(folder, tracks, embeddings, settings, kind="flat")
    cat = catalogue.load(folder)
    return [
        [hit.row for hit in catalogue.search(cat, engine.window_embeddings(c, slen, 5.0), 10,
                                             exact=True)]
        for c in clips
    ]


def bench_parity(args):
    dataset = test_tracks(args.demo)
    checkpoint = os.path.join(args.demo, "runs", "demo-clews", "checkpoint_last.ckpt")
    found = engines(checkpoint, training_audio(args.demo))
    sr = found[BASE].samplerate
    waveforms = [load_audio(dataset.filename[k], sr) for k in dataset.versions]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(waveforms), size=min(args.clips, len(waveforms)), replace=False)
    clips = []
    for i in picks:
        start = int(rng.integers(0, max(1, waveforms[i].size - 20 * sr)))
        clips.append(waveforms[i][start : start + 20 * sr])
    print(
        f"\n2. accuracy parity, trained demo CLEWS on the demo's {len(waveforms)} test tracks "
        f"(top-10: {len(clips)} excerpts of 20 s):"
    )
    print(f"   {'backend':>21}{'track MAP':>11}{'20 s MAP':>10}{'emb. diff':>11}{'top-10':>8}")
    base = {}
    tmp = scratch_folder("bench_backends_cat_")
    for key, engine in found.items():
        track, z = track_map(engine, dataset, waveforms, -1, 5.0)
        window, _ = track_map(engine, dataset, waveforms, 20.0, 5.0)
        rows = top10(engine, waveforms, clips, os.path.join(tmp, label(key)))
        if key == BASE:
            base = {"z": z, "rows": rows, "track": track, "window": window}
        agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, base["rows"])])
        print(
            f"   {label(key):>21}{track:>11.3f}{window:>10.3f}{relative(z, base['z']):>11.1e}"
            f"{agree:>8.2f}   (MAP change {track - base['track']:+.4f} / "
            f"{window - base['window']:+.4f})"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="part 1's device (cpu, cuda)")
    parser.add_argument("--files", type=int, default=4, help="mp3 files of part 1")
    parser.add_argument("--seconds", type=float, default=60.0, help="their length")
    parser.add_argument("--demo", default=None, help="demo.py's output folder (part 2)")
    parser.add_argument("--clips", type=int, default=30, help="excerpts of part 2's top-10")
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 1")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    if "1" not in skip:
        bench_throughput(args)
    if args.demo and "2" not in skip:
        bench_parity(args)


if __name__ == "__main__":
    main()
