"""How much of the versions do a corpus's pitch classes hold, before any training? Two
training-free, transposition-invariant baselines on the pitch classes a MOVE config computes
(``model.prepare``: the CQT folded onto 12 classes at 10.77 frames/s), over one partition of a
metadata file, whole tracks, each track a query against all others:

- ``mean chroma``: the track's mean pitch-class vector, cosine distance at the best of the 12
  circular shifts;
- ``2D-FFT``: magnitudes of the 2D Fourier transform of 75-frame patches (half overlapping),
  their median over the track, cosine distance (Bertin-Mahieux & Ellis, ISMIR 2012): invariant to
  circular transposition and to where a passage plays.

With ``--spans`` (a partial corpus's ``spans.json``) each track is read only where it plays its
work: an oracle, the floor once the other music is cut away.

A trained MOVE that ranks below them has not learned what the pitch classes already show
(README, MOVE). Prints MAP, MR1 and P@1 with 95% confidence half-widths (``lib.metrics``).

    .venv/bin/python -m benchmarks.bench_pitch_class_baseline --meta runs/demo/metadata-demo.pt \\
        --audio runs/demo/audio [--partition test] [--conf config/demo-move.yaml] \\
        [--spans <partial corpus>/spans.json]
"""

import argparse
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from lib import metrics
from lib.audio import load_audio
from lib.config import load_run_config
from lib.extract import whole_window_seconds
from lib.metadata import load_metadata
from lib.model_base import build_model

PATCH = 75  # frames, about 7 s
SHIFTS = 12
DEFAULT_CONF = "config/demo-move.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta", required=True, help="metadata file of data_preproc.py")
    parser.add_argument("--audio", required=True, help="its audio folder")
    parser.add_argument("--partition", default="test")
    parser.add_argument("--conf", default=DEFAULT_CONF, help="a MOVE config (audio)")
    parser.add_argument(
        "--spans", default=None, help="spans.json of a partial corpus: read each track only where "
        "it plays its work (an oracle: the floor once the other music is cut away)",
    )
    return parser.parse_args(argv)


def load_spans(path):
    """{filename: {"start", "end", ...}} of a ``spans.json``, or None for no path."""
    if path is None:
        return None
    with open(path) as handle:
        return json.load(handle)


def work_passage(spans, filename):
    """(start, duration) in seconds of where the version ``filename`` plays its work, from the
    ``spans.json`` of a partial corpus (``lib.synth``, ``lib.score_corpus``)."""
    if filename not in spans:
        raise ValueError(f"{filename}: not in the spans file (not a version of that corpus?)")
    span = spans[filename]
    return span["start"], span["end"] - span["start"]


def track_pitch_classes(model, info, splits, audio_dir, partition, samplerate, spans=None):
    """(clique names, [(12, frames) pitch classes]) of every version of ``partition``, read from
    each version's ``filename`` under ``audio_dir``: all of it, or with ``spans`` (a partial
    corpus's ``spans.json``) only where it plays its work."""
    cliques, classes = [], []
    items = [(c, k) for c, keys in splits[partition].items() for k in keys]
    for clique, key in tqdm(items, desc="pitch classes", unit="track"):
        filename = info[key]["filename"]
        start, duration = (0.0, None) if spans is None else work_passage(spans, filename)
        path = os.path.join(audio_dir, filename)
        audio = load_audio(path, samplerate=samplerate, start=start, duration=duration)
        classes.append(whole_pitch_classes(model, audio, samplerate))
        cliques.append(clique)
    return cliques, classes


def whole_pitch_classes(model, audio, samplerate):
    """(12, frames) pitch classes of all of ``audio`` (T,) at ``samplerate``: one shingle as long
    as the audio (the config's shingles would keep its first 20 s only), without the silence
    that completes audio shorter than the config's shingle."""
    seconds = len(audio) / samplerate
    shingle = max(whole_window_seconds(len(audio), samplerate), model.minlen)
    x = torch.as_tensor(audio, dtype=torch.float32).reshape(1, -1)
    with torch.no_grad():
        classes = model.prepare(x, shingle_len=shingle, shingle_hop=shingle)
    if classes.shape[1] != 1:
        raise RuntimeError(f"expected one shingle of {shingle:.2f} s, got {classes.shape[1]}")
    frames = classes.shape[-1]
    return classes[0, 0, :, : max(1, round(frames * seconds / shingle))]


def unit(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def mean_chroma_distances(classes):
    """(N, N) cosine distance between mean pitch-class vectors at the best circular shift."""
    means = unit(torch.stack([c.mean(-1) for c in classes]))
    shifted = torch.stack([torch.roll(means, s, dims=-1) for s in range(SHIFTS)])
    return 1 - torch.einsum("sic,jc->sij", shifted, means).amax(0)


def fft2d_distances(classes):
    """(N, N) cosine distance between median 2D-FFT magnitudes of 75-frame patches."""
    rows = []
    for c in classes:
        if c.shape[-1] < PATCH:
            c = torch.nn.functional.pad(c, (0, PATCH - c.shape[-1]))
        patches = c.unfold(-1, PATCH, PATCH // 2).permute(1, 0, 2)  # (n, 12, PATCH)
        rows.append(torch.fft.fft2(patches).abs().median(0).values.flatten())
    z = unit(torch.stack(rows))
    return 1 - z @ z.T


def evaluate(distances, cliques):
    """``lib.metrics.aggregate`` of every track querying all the others with ``distances``."""
    names = np.array(cliques)
    ismatch = torch.as_tensor(names[:, None] == names[None, :])
    exclude = torch.eye(len(names), dtype=torch.bool)
    return metrics.aggregate(metrics.query_metrics(distances, ismatch, exclude))


def scores(meta, audio_dir, partition="test", conf_path=DEFAULT_CONF, spans=None):
    """{"mean chroma" | "2D-FFT": ``evaluate``} of the tracks of ``partition`` of the metadata
    file ``meta``, on the pitch classes of the MOVE config ``conf_path``; with ``spans`` ({filename:
    {"start", "end"} in seconds}, a partial corpus's ``spans.json``) each track is cut to where it
    plays its work, an oracle no real catalogue has: how well the pitch classes tell the versions
    apart once the other music is cut away."""
    conf = load_run_config(conf_path)
    model = build_model(conf.model, sr=conf.data.samplerate).eval()
    info, splits = load_metadata(meta)
    cliques, classes = track_pitch_classes(
        model, info, splits, audio_dir, partition, conf.data.samplerate, spans
    )
    print(f"{len(classes)} tracks of {len(set(cliques))} works ({partition}), {conf_path}")
    return {
        "mean chroma": evaluate(mean_chroma_distances(classes), cliques),
        "2D-FFT": evaluate(fft2d_distances(classes), cliques),
    }


def main(argv=None):
    args = parse_args(argv)
    spans = load_spans(args.spans)
    for name, agg in scores(args.meta, args.audio, args.partition, args.conf, spans).items():
        cells = "  ".join(f"{k} {agg[k][0]:.3f} +-{agg[k][1]:.3f}" for k in ("MAP", "MR1", "P@1"))
        print(f"{name:<12} {cells}  ({agg['n_queries']} queries)")


if __name__ == "__main__":
    main()
