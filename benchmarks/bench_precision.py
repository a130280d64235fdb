"""32 bits against bf16 (and, on a GPU, fp16) mixed precision (lib/precision.py), each ratio
against the 32-bit run of the same process, on this machine's CPU (or a GPU with --device cuda).

1. Embedding throughput, decoding included (``lib.matching.inference.embed_files``, what
   inference.py runs): full-size CLEWS (config/dvi2-clews.yaml, random weights), mp3 files, 20 s windows
   every 5 s; and the relative difference of the embeddings.
2. A CLEWS training step (the small model of bench_train_step: 16 tracks x 40 s, Adam).
3. Accuracy parity (with ``--demo runs/demo``, the folder ``demo.py`` leaves): on the demo's
   test tracks, track-level and 20 s-window MAP of the trained demo model and of a full-size
   CLEWS with random weights, and the top-10 agreement of catalogue searches of 20 s clips.

    .venv/bin/python -m benchmarks.bench_precision [--demo runs/demo] [--device cpu]
"""

import argparse
import os
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.bench_train_step import SR, bench_conf
from benchmarks.common import scratch_folder
from lib import precision, retrieval, synth
from lib.matching import catalogue
from lib.audio import load_audio
from lib.checkpoint import load_trained_model
from lib.dataset import Dataset
from lib.extract import embed_track, settings_for, window_embeddings
from lib.matching.inference import TorchWindows, embed_files
from lib.model_base import build_model
from models.clews import Model

MODES = ("32-true", "bf16-mixed")


def full_clews(seed=0):
    conf = OmegaConf.load("config/dvi2-clews.yaml")
    torch.manual_seed(seed)
    return build_model(conf.model, sr=16000).eval()


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def bench_embedding(args, modes):
    model = full_clews().to(args.device)
    tmp = scratch_folder("bench_precision_")
    synth.make_corpus(
        os.path.join(tmp, "in"), works=1, versions=args.files, seconds=args.seconds, seed=0,
        formats=("mp3",),
    )
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(tmp, "in")) for f in fs)
    rates, outputs = {}, {}
    for mode in modes:
        jobs = [(f, os.path.join(tmp, mode, f"{i}.pt")) for i, f in enumerate(files)]
        engine = TorchWindows(model, "random weights", torch.device(args.device), mode, "none")
        summary = embed_files(engine, jobs, 20.0, 5.0, nworkers=1)
        rates[mode] = summary["audio_seconds"] / summary["wall_seconds"]
        outputs[mode] = torch.cat([torch.load(dst, weights_only=True) for _, dst in jobs])
    base = rates["32-true"]
    print(
        f"\n1. embedding, full-size CLEWS ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters), {len(files)} mp3 files of {args.seconds:g} s, 20 s windows every 5 s, "
        f"decoding included, {torch.get_num_threads()} threads on {args.device}:"
    )
    for mode in modes:
        diff = relative(outputs[mode], outputs["32-true"])
        print(
            f"   {mode:>10}: {rates[mode]:6.2f} s of audio per second ({rates[mode] / base:.2f}x"
            f" the 32-bit rate); embeddings differ from 32-bit ones by {diff:.1e} (relative)"
        )


def bench_train_step(args, modes):
    torch.manual_seed(0)
    model = Model(bench_conf(), sr=SR).to(args.device).train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    audio = torch.randn(16, 40 * SR, device=args.device) * 0.1
    labels = torch.arange(8, device=args.device).repeat_interleave(2)
    ids = torch.arange(16, device=args.device)

    def step(mode):
        optim.zero_grad(set_to_none=True)
        with torch.inference_mode():
            h = model.prepare(audio)
        with precision.autocast(mode, args.device):
            z, _ = model.embed(h.clone())
            loss, _ = model.loss(labels, ids, z.float())
        loss.backward()
        optim.step()

    times = {}
    for mode in modes:
        step(mode)  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            step(mode)
        times[mode] = (time.perf_counter() - start) / args.steps
    print(f"\n2. training step, CLEWS {sum(p.numel() for p in model.parameters()):,} parameters,")
    print(f"   16 tracks x 40 s, Adam, {args.steps} steps each on {args.device}:")
    for mode in modes:
        print(
            f"   {mode:>10}: {1000 * times[mode]:7.0f} ms/step "
            f"({times['32-true'] / times[mode]:.2f}x the 32-bit speed)"
        )


def test_tracks(demo):
    conf = OmegaConf.load(os.path.join(demo, "runs", "demo-clews", "configuration.yaml"))
    conf.data.path = conf.path
    return Dataset(conf.data, "test", fullsongs=True, checks=False)


def demo_map(model, dataset, windows, mode, device):
    """Track-level MAP of the demo's test tracks under ``windows`` ((length, hop) s)."""
    keys = list(dataset.versions)
    settings = settings_for(model, windows[0], windows[1], 600.0)
    zs, masks = [], []
    for key in keys:
        audio = torch.from_numpy(load_audio(dataset.filename[key], model.sr))
        with precision.autocast(mode, device):
            z, mask = embed_track(model, audio, settings.slen, settings.shop, settings.nwin, device)
        zs.append(z)
        masks.append(mask)
    cliques = torch.tensor([dataset.clique_id[dataset.clique_of[k]] for k in keys])
    ids = torch.tensor([dataset.info[k]["id"] for k in keys])
    emb = retrieval.Embeddings(cliques, ids, torch.stack(zs).half(), torch.stack(masks))
    _, per_query, _, _ = retrieval.evaluate(model, emb, emb)
    return per_query["AP"].nanmean().item(), torch.stack(zs)


def top10_agreement(model, dataset, mode, device, clips=20):
    """Mean overlap of the top 10 tracks of a catalogue search, 32 bits vs ``mode``: catalogue
    of the test tracks in 32 bits, queries of 20 s excerpts embedded in each precision."""
    keys = list(dataset.versions)
    slen, shop = model.get_shingle_params()[0], 5.0
    tracks, embeddings = [], []
    for key in keys:
        audio = torch.from_numpy(load_audio(dataset.filename[key], model.sr))
        embeddings.append(window_embeddings(model, audio, slen, shop, device).numpy())
        tracks.append({"id": key})
    settings = {"win_len": slen, "hop_size": shop, "metric": model.segment_metric,
                "redux": model.default_redux}
    folder = scratch_folder("bench_precision_cat_")
    catalogue.build(folder, tracks, embeddings, settings, kind="flat")
    cat = catalogue.load(folder)
    rng = np.random.default_rng(0)
    overlaps = []
    for key in rng.choice(keys, size=min(clips, len(keys)), replace=False):
        audio = torch.from_numpy(load_audio(dataset.filename[key], model.sr))
        start = int(rng.integers(0, max(1, audio.numel() - 20 * model.sr)))
        clip = audio[start : start + 20 * model.sr]
        found = {}
        for m in ("32-true", mode):
            with precision.autocast(m, device):
                query = window_embeddings(model, clip, slen, shop, device).numpy()
            found[m] = [x.row for x in catalogue.search(cat, query, 10, exact=True)]
        overlaps.append(len(set(found["32-true"]) & set(found[mode])) / 10)
    return float(np.mean(overlaps))


def bench_parity(args, modes):
    dataset = test_tracks(args.demo)
    ckpt = os.path.join(args.demo, "runs", "demo-clews", "checkpoint_best.ckpt")
    trained, _, _ = load_trained_model(ckpt, device=args.device)
    print(f"\n3. accuracy parity on the demo's {len(dataset.versions)} test tracks:")
    print(f"   {'model':<28}{'precision':>11}{'track MAP':>11}{'20 s MAP':>10}{'emb. diff':>11}"
          f"{'top-10':>8}")
    for name, model in (("demo CLEWS (trained)", trained), ("full-size CLEWS (random)", None)):
        if model is None:  # 16 kHz: the tracks are decoded at each model's own rate
            model = full_clews().to(args.device)
        base = {}
        for mode in modes:
            track, z_track = demo_map(model, dataset, (-1, None), mode, args.device)
            window, _ = demo_map(model, dataset, (20.0, 5.0), mode, args.device)
            if mode == "32-true":
                base = {"z": z_track}
                diff, agree = 0.0, 1.0
            else:
                diff = relative(z_track.float(), base["z"].float())
                agree = top10_agreement(model, dataset, mode, args.device)
            print(f"   {name:<28}{mode:>11}{track:>11.3f}{window:>10.3f}{diff:>11.1e}"
                  f"{agree:>8.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--demo", default=None, help="demo.py's output folder (part 3)")
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 1,2")
    args = parser.parse_args()
    modes = ["32-true"]
    for name in ("bf16", "16"):  # what this device computes (fp16 on a GPU only)
        try:
            modes.append(precision.check(name, args.device))
        except precision.PrecisionError as err:
            print(f"({err})")
    skip = set(args.skip.split(","))
    if "1" not in skip:
        bench_embedding(args, modes)
    if "2" not in skip:
        bench_train_step(args, modes)
    if args.demo and "3" not in skip:
        bench_parity(args, modes)


if __name__ == "__main__":
    main()
