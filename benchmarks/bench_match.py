"""Catalogue search: two-stage (FAISS shortlist + exact reduction) against brute force, and
inference throughput of the full-size CLEWS.

Catalogue: 20,000 tracks x 24 windows x 1024-d (fp16 on disk), cliques of 4 versions that share
24 random "section" vectors in a shifted order plus per-version noise, so versions exist; the
cliques' sections are drawn around 200 random "style" centres, so the space is clustered. Queries:
200 clips of 20 s = one 20 s window each, a section of a random track plus noise. For every
query: latency of ``lib.matching.catalogue.search`` (two-stage: FAISS IVF, 256 nearest windows per
clip window, 100 tracks scored with ``bpwr-5``), latency of the exact search over all tracks (the
baseline, same process), recall@10 of the two-stage top 10 against the exact top 10.

Inference: ``lib.matching.inference.embed_files`` (what ``inference.py`` runs: decoding in worker
processes, 20 s windows every 5 s) with the full-size CLEWS of config/dvi2-clews.yaml (random
weights) on generated audio; audio seconds embedded per wall-clock second.

    .venv/bin/python -m benchmarks.bench_match
    .venv/bin/python -m benchmarks.bench_match --skip-inference --tracks 2000
"""

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.common import scratch_folder
from lib.matching import catalogue as C
from lib import retrieval as R


def make_catalogue(ntracks, windows, dim, versions=4, styles=None, noise=0.6, seed=0):
    """Clustered like a music catalogue: ``styles`` random centres; each clique draws its 24
    section vectors around one centre; each version plays them in a shifted order, plus noise."""
    rng = np.random.default_rng(seed)
    nclique = ntracks // versions
    styles = styles or max(1, nclique // 25)
    centres = rng.standard_normal((styles, dim), dtype=np.float32)
    # whole cliques only: rows beyond nclique * versions would be left unwritten
    z = np.empty((nclique * versions, windows, dim), dtype=np.float16)
    for c in range(nclique):
        sections = centres[rng.integers(styles)] + rng.standard_normal(
            (windows, dim), dtype=np.float32
        )
        for v in range(versions):
            x = np.roll(sections, rng.integers(windows), axis=0)
            x += noise * rng.standard_normal(x.shape, dtype=np.float32)
            z[c * versions + v] = x
    return z


def percentile_ms(values, q):
    return 1000 * float(np.percentile(values, q))


def bench_search(args):
    tmp = scratch_folder("bench_match_")
    t0 = time.time()
    z = make_catalogue(args.tracks, args.windows, args.dim)
    tracks = [{"id": f"t{i}"} for i in range(len(z))]
    settings = {"win_len": 20.0, "hop_size": 5.0, "metric": "nsqeuc", "redux": "bpwr-5"}
    print(f"catalogue {z.shape} made in {time.time() - t0:.1f} s")
    t0 = time.time()
    C.build(tmp, tracks, list(z), settings, kind="ivf")
    del z
    cat = C.load(tmp)
    print(
        f"index built in {time.time() - t0:.1f} s: {cat.info['kind']}, {cat.index.ntotal} "
        f"windows, {cat.info['nlist']} cells"
    )
    cat.z = np.load(os.path.join(tmp, cat.generation, "z.npy"))  # in memory, as when served

    rng = np.random.default_rng(1)
    queries = []
    for _ in range(args.queries):
        row, window = rng.integers(len(cat.tracks)), rng.integers(args.windows)
        q = np.asarray(cat.z[row, window : window + 1], dtype=np.float32)
        queries.append(q + 0.6 * rng.standard_normal(q.shape, dtype=np.float32))

    # ground truth: exact top 10 of every query, all queries in one batch through the engine
    t0 = time.time()
    qemb = R.Embeddings(
        torch.arange(len(queries)),
        torch.arange(len(queries)),
        torch.from_numpy(np.stack(queries)).half(),
        None,
    )
    parts = []
    for i in range(0, len(cat.tracks), 1024):
        rows = torch.arange(i, min(i + 1024, len(cat.tracks)))
        z = torch.from_numpy(np.array(cat.z[i : i + 1024]))
        block = R.Embeddings(rows, rows, z, torch.from_numpy(np.array(cat.mask[i : i + 1024])))
        parts.append(R.block_distances(qemb, block, "bpwr-5"))
    truth = torch.cat(parts, 1).numpy()
    truth = [set(np.argsort(row, kind="stable")[:10].tolist()) for row in truth]
    print(f"exact top 10 of all queries in one batch: {time.time() - t0:.1f} s")

    # track distances as the torch backend computes them (the default), then in numpy (the
    # exported backends': the matcher without PyTorch). One pass each, as a process uses one:
    # interleaved, numpy's BLAS threads (still spinning after a call) slowed torch's next call
    # (p95 49 ms instead of 11 ms)
    fast_t, numpy_t, exact_t, recall, same, fast_rows = [], [], [], [], [], []
    C.search(cat, queries[0], 10, nprobe=args.nprobe, scores=R.track_scores)  # warm-up
    for n, q in enumerate(queries):
        t0 = time.perf_counter()
        fast = C.search(cat, q, 10, nprobe=args.nprobe, size=args.shortlist, scores=R.track_scores)
        fast_t.append(time.perf_counter() - t0)
        fast_rows.append([m.row for m in fast])
        recall.append(len({m.row for m in fast} & truth[n]) / 10)
        if n < args.exact_queries:  # the baseline's latency, one query at a time
            t0 = time.perf_counter()
            exact = C.search(cat, q, 10, exact=True, scores=R.track_scores)
            exact_t.append(time.perf_counter() - t0)
            assert {m.row for m in exact} == truth[n]
    C.search(cat, queries[0], 10, nprobe=args.nprobe)  # warm-up
    for n, q in enumerate(queries):
        t0 = time.perf_counter()
        plain = C.search(cat, q, 10, nprobe=args.nprobe, size=args.shortlist)
        numpy_t.append(time.perf_counter() - t0)
        same.append([m.row for m in plain] == fast_rows[n])
    print(
        f"\n{args.queries} queries of one 20 s window, top 10, bpwr-5, "
        f"{torch.get_num_threads()} threads:"
    )
    print("| | p50 | p95 |\n|---|---|---|")
    print(
        f"| two-stage (FAISS nprobe {args.nprobe}, shortlist {args.shortlist}) | "
        f"{percentile_ms(fast_t, 50):.1f} ms | {percentile_ms(fast_t, 95):.1f} ms |"
    )
    print(
        f"| the same, track distances in numpy (exported backends) | "
        f"{percentile_ms(numpy_t, 50):.1f} ms | {percentile_ms(numpy_t, 95):.1f} ms |"
    )
    print(
        f"| exact over all tracks (baseline) | {percentile_ms(exact_t, 50):.1f} ms | "
        f"{percentile_ms(exact_t, 95):.1f} ms |"
    )
    print(f"numpy's top 10 in the order of torch's for {np.mean(same):.1%} of the queries")
    print(
        f"two-stage is {np.median(exact_t) / np.median(fast_t):.1f}x faster (p50); "
        f"recall@10 against exact: {np.mean(recall):.4f}"
    )


def bench_inference(args):
    from omegaconf import OmegaConf

    from lib import synth
    from lib.matching.inference import TorchWindows, embed_files
    from lib.model_base import build_model

    conf = OmegaConf.load("config/dvi2-clews.yaml")
    torch.manual_seed(0)
    model = build_model(conf.model, sr=16000).eval()
    tmp = scratch_folder("bench_inference_")
    synth.make_corpus(
        os.path.join(tmp, "in"),
        works=1,
        versions=args.files,
        seconds=args.seconds,
        seed=0,
        formats=("mp3",),
    )
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(tmp, "in")) for f in fs)
    jobs = [(f, os.path.join(tmp, "out", f"{i}.pt")) for i, f in enumerate(files)]
    engine = TorchWindows(model, "random weights", torch.device("cpu"), digest="none")
    summary = embed_files(engine, jobs, 20.0, 5.0, nworkers=1)
    rate = summary["audio_seconds"] / summary["wall_seconds"]
    print(
        f"\ninference, full-size CLEWS ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters), {len(files)} mp3 files, {summary['audio_seconds']:.0f} s of audio, "
        f"20 s windows every 5 s, {torch.get_num_threads()} threads: "
        f"{rate:.2f} s of audio per second ({summary['wall_seconds']:.1f} s)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=20000)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--exact-queries", type=int, default=20)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    if not args.skip_search:
        bench_search(args)
    if not args.skip_inference:
        bench_inference(args)


if __name__ == "__main__":
    main()
