"""Scaling curves, with a plot (PNG), each point against its own baseline of the same run:

1. evaluation (``lib.retrieval.evaluate``, all tracks against all, ``bpwr-10``) against the
   number of tracks N: the time should grow as N^2 and stay close to the matrix-product floor
   (the same distance products and nothing else), measured at each N;
2. catalogue query latency (two-stage search, ``lib.matching.catalogue``) against the catalogue's
   size in windows, against exact search over every track at the smallest size;
3. embedding time and peak memory (RSS) against file length (``lib.extract.window_embeddings``,
   what inference.py runs per file; each length in a fresh process): time should grow
   linearly, the memory used while embedding (beyond the decoded waveform) stay flat.

    .venv/bin/python -m benchmarks.bench_scaling [--out benchmarks/out] [--full]
"""

import argparse
import multiprocessing
import os
import threading
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks import bench_eval, bench_match  # noqa: E402
from benchmarks.common import scratch_folder  # noqa: E402
from lib.matching import catalogue  # noqa: E402
from lib import retrieval as R  # noqa: E402
from lib.extract import window_embeddings  # noqa: E402
from lib.model_base import build_model  # noqa: E402


class PeakRSS:
    """The largest resident set size (bytes) of this process while the block runs, sampled
    every 20 ms from /proc (Linux)."""

    def __enter__(self):
        self.peak, self.running = rss(), True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())


def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def loglog_slope(x, y):
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def evaluation_curve(args):
    print("\n1. evaluation, all against all, bpwr-10, "
          f"{args.windows} windows x {args.dim}-d fp16, {torch.get_num_threads()} threads:")
    rows = []
    for n in args.tracks:
        emb = bench_eval.make_catalogue(n, args.windows, args.dim)
        device = torch.device("cpu")
        floor = bench_eval.products_only(emb, emb, device, R.DEFAULT_MAX_ELEMENTS)
        start = time.perf_counter()
        R.evaluate(bench_eval.Metric(), emb, emb, "bpwr-10", device=device)
        engine = time.perf_counter() - start
        rows.append((n, engine, floor))
        print(f"   N = {n:6d}: engine {engine:8.2f} s, floor {floor:8.2f} s "
              f"({engine / floor:.2f}x the floor)")
    n, engine, floor = map(np.array, zip(*rows))
    print(f"   growth: engine ~ N^{loglog_slope(n, engine):.2f}, floor ~ N^"
          f"{loglog_slope(n, floor):.2f}; worst engine / floor {max(engine / floor):.2f}x")
    return n, engine, floor


def query_curve(args):
    print(f"\n2. catalogue query, one 20 s window, top 10, {args.qdim}-d, IVF two-stage:")
    rows = []
    for windows in args.windows_sizes:
        z = bench_match.make_catalogue(windows // 24, 24, args.qdim)
        tracks = len(z)
        folder = scratch_folder("bench_scaling_")
        settings = {"win_len": 20.0, "hop_size": 5.0, "metric": "nsqeuc", "redux": "bpwr-5"}
        catalogue.build(folder, [{"id": str(i)} for i in range(tracks)], list(z), settings,
                        kind="ivf")
        del z
        cat = catalogue.load(folder)
        rng = np.random.default_rng(1)
        times, exact = [], []
        for i in range(args.queries + 1):
            row, w = rng.integers(tracks), rng.integers(24)
            q = np.asarray(cat.z[row, w : w + 1], dtype=np.float32)
            q = q + 0.6 * rng.standard_normal(q.shape, dtype=np.float32)
            start = time.perf_counter()
            catalogue.search(cat, q, 10)
            if i:  # the first one warms up
                times.append(time.perf_counter() - start)
            if i and windows == args.windows_sizes[0] and i <= 5:
                start = time.perf_counter()
                catalogue.search(cat, q, 10, exact=True)
                exact.append(time.perf_counter() - start)
        p50 = 1000 * float(np.median(times))
        rows.append((windows, p50))
        note = ""
        if exact:
            note = f" (exact search over all tracks: {1000 * np.median(exact):.1f} ms)"
        print(f"   {windows:8d} windows ({tracks} tracks): p50 {p50:7.1f} ms{note}")
    w, p50 = map(np.array, zip(*rows))
    print(f"   growth: latency ~ windows^{loglog_slope(w, p50):.2f}")
    return w, p50


def embed_one(name, seconds):
    """In a fresh process: (model parameters, window length, seconds taken, windows, peak RSS
    in MiB beyond the process after the model was built, the waveform's own MiB)."""
    conf = OmegaConf.load(f"config/{name}.yaml")
    torch.manual_seed(0)
    model = build_model(conf.model, sr=conf.data.samplerate).eval()
    slen = model.get_shingle_params()[0]
    audio = 0.1 * torch.randn(int(seconds * model.sr))
    base = rss()
    with PeakRSS() as peak:
        start = time.perf_counter()
        with torch.inference_mode():
            z = window_embeddings(model, audio, slen, 5.0, "cpu")
        elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return params, slen, elapsed, len(z), (peak.peak - base) / 2**20, audio.numel() * 4 / 2**20


def embedding_curve(args):
    name = "dvi2-clews" if args.full else "demo-clews"
    rows = []
    spawn = multiprocessing.get_context("spawn")
    for i, seconds in enumerate(args.lengths):
        with spawn.Pool(1) as pool:  # a fresh process: memory freed by another run is not reused
            params, slen, elapsed, nwin, extra, audio_mb = pool.apply(embed_one, (name, seconds))
        if i == 0:
            print(f"\n3. embedding one file, {name} ({params:,} parameters), {slen:g} s windows "
                  "every 5 s, each length in a fresh process:")
        rows.append((seconds, elapsed, extra))
        print(f"   {seconds / 60:6.1f} min: {elapsed:7.2f} s ({seconds / elapsed:.0f}x real "
              f"time), {nwin} windows, peak RSS +{extra:.0f} MiB while embedding (the "
              f"waveform, already in memory: {audio_mb:.0f} MiB)")
    s, t, m = map(np.array, zip(*rows))
    print(f"   growth: time ~ length^{loglog_slope(s, t):.2f}; peak RSS while embedding "
          f"{m.min():.0f} .. {m.max():.0f} MiB")
    return s, t, m


def plot(path, evaluation, query, embedding):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if evaluation is not None:
        n, engine, floor = evaluation
        axes[0].loglog(n, engine, "o-", label="engine")
        axes[0].loglog(n, floor, "s--", label="matrix-product floor")
        axes[0].loglog(n, engine[0] * (n / n[0]) ** 2, ":", color="grey", label="N^2")
        axes[0].set(xlabel="tracks N (all against all)", ylabel="seconds",
                    title="evaluation time")
        axes[0].legend()
    if query is not None:
        w, p50 = query
        axes[1].semilogx(w, p50, "o-")
        axes[1].set(xlabel="catalogue windows", ylabel="p50 latency (ms)",
                    title="catalogue query latency")
    if embedding is not None:
        s, t, m = embedding
        axes[2].plot(s / 60, t, "o-", label="time (s)")
        axes[2].plot(s / 60, m, "s--", label="peak RSS while embedding (MiB)")
        axes[2].set(xlabel="file length (min)", title="embedding one file")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument("--windows", type=int, default=56)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--windows-sizes", type=int, nargs="+",
                        default=[20_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--qdim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--lengths", type=float, nargs="+", default=[60, 600, 1800, 7200])
    parser.add_argument("--full", action="store_true", help="full-size CLEWS for part 3")
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 2")
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    os.makedirs(args.out, exist_ok=True)
    evaluation = None if "1" in skip else evaluation_curve(args)
    query = None if "2" in skip else query_curve(args)
    embedding = None if "3" in skip else embedding_curve(args)
    plot(os.path.join(args.out, "scaling.png"), evaluation, query, embedding)


if __name__ == "__main__":
    main()
