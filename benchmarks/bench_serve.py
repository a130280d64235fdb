"""Load on ``match.py serve``: concurrent and sequential clip queries over HTTP against a
2,000-track catalogue, every answer checked, latency and the server's memory reported.

Corpus: ``lib.synth`` works (default 500 works x 4 versions of 60 s, mp3), all of them in one
catalogue built by ``match.py index`` with a trained checkpoint (default: the demo's, made by
``make demo``). Queries: 20 s excerpts of random catalogue tracks, made quieter, with noise,
re-encoded as mp3; an answer is correct when its first match is the excerpt's track. How many
also place the clip within one hop of where it was cut is counted apart: music repeats itself,
and a chorus matches wherever it comes back.

Phases, against one server process (started as a user would, on 127.0.0.1):
1. baseline: 20 queries one at a time (unloaded latency);
2. concurrent: ``--clients`` (50) queries sent at once;
3. sequential: ``--sequential`` (500) queries one after another, the server's resident memory
   read from /proc every 50 queries.
Prints, per phase, answered / sent, correct, placed, p50 / p95 / max latency, and the ratios: loaded
p50 / unloaded p50, memory after the last query / after the first 50.

    .venv/bin/python -m benchmarks.bench_serve --out /tmp/bench_serve
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lib import synth
from lib.audio import load_audio, write_audio
from lib.matching.server import post_upload, wait_for_url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CHECKPOINT = os.path.join(ROOT, "runs/demo/runs/demo-clews/checkpoint_last.ckpt")


def run(command):
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"error: the command above failed with status {done.returncode}")


def build(args):
    """The corpus and its catalogue under ``--out`` (kept: a second run reuses them)."""
    audio = os.path.join(args.out, "audio")
    marker = os.path.join(args.out, "corpus.json")
    wanted = {"works": args.works, "versions": args.versions, "seconds": args.seconds}
    have = json.load(open(marker)) if os.path.isfile(marker) else None
    if have != wanted:
        start = time.time()
        synth.make_corpus(
            audio, args.works, args.versions, args.seconds, seed=0, formats=("mp3",), njobs=-1
        )
        with open(marker, "w") as handle:
            json.dump(wanted, handle)
        print(f"corpus rendered in {time.time() - start:.0f} s")
    catalogue = os.path.join(args.out, "catalogue")
    if not os.path.isfile(os.path.join(catalogue, "catalogue.json")):
        run(
            [
                sys.executable,
                "match.py",
                "index",
                f"--checkpoint={args.checkpoint}",
                f"--audio={audio}",
                f"--out={catalogue}",
                f"--hop_size={args.hop}",
            ]
        )
    return audio, catalogue


def make_clips(audio, catalogue, count, seconds, seed, folder):
    """[(clip bytes, track id, start s)] of ``count`` excerpts of random catalogue tracks."""
    with open(os.path.join(catalogue, "catalogue.json")) as handle:
        tracks = json.load(handle)["tracks"]
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    clips = []
    for i in range(count):
        track = tracks[rng.integers(len(tracks))]
        x = load_audio(track["source"], 16000)
        start = float(rng.uniform(0, max(0.0, x.size / 16000 - seconds)))
        piece = x[int(start * 16000) : int((start + seconds) * 16000)]
        piece = 0.7 * piece + 0.003 * rng.standard_normal(piece.size).astype(np.float32)
        path = os.path.join(folder, f"clip{i:04d}.mp3")
        write_audio(path, piece, 16000)
        with open(path, "rb") as handle:
            clips.append((handle.read(), track["id"], start))
    return clips


def start_server(catalogue):
    command = [sys.executable, "match.py", "serve", f"--catalogue={catalogue}", "--port=0"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = wait_for_url(process.stdout, lambda line: print("  server:", line.rstrip()))
    if url is None:
        sys.exit("error: the server did not start")
    return process, url


def query(url, clip):
    """(seconds, status, parsed JSON or the error text) of one upload; status None when the
    connection failed (the answer is lost)."""
    start = time.perf_counter()
    try:
        status, text = post_upload(url, "clip.mp3", clip[0], fmt="json")
    except OSError as err:
        return time.perf_counter() - start, None, str(err)
    seconds = time.perf_counter() - start
    return seconds, status, json.loads(text) if status == 200 else text


def correct(clip, answer):
    """Whether the first match is the excerpt's track."""
    _, track_id, _ = clip
    return isinstance(answer, dict) and bool(answer["matches"]) and (
        answer["matches"][0]["id"] == track_id
    )


def placed(clip, answer, hop):
    """Whether the first match's track range starts within one hop of the excerpt's start."""
    return correct(clip, answer) and abs(answer["matches"][0]["track_s"][0] - clip[2]) <= hop


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def report(name, results, clips, hop):
    seconds = np.array([r[0] for r in results])
    answered = sum(r[1] == 200 for r in results)
    right = sum(correct(c, r[2]) for c, r in zip(clips, results))
    where = sum(placed(c, r[2], hop) for c, r in zip(clips, results))
    p50, p95 = np.percentile(seconds, [50, 95]) * 1000
    print(
        f"{name:<12} answered {answered}/{len(results)}, right track first {right}, its range "
        f"within {hop:g} s of the cut {where}; latency p50 {p50:.0f} ms, p95 {p95:.0f} ms, max "
        f"{seconds.max() * 1000:.0f} ms"
    )
    return p50


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/bench_serve")
    parser.add_argument("--checkpoint", default=DEMO_CHECKPOINT)
    parser.add_argument("--works", type=int, default=500)
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--hop", type=float, default=5.0, help="catalogue window hop (s)")
    parser.add_argument("--clip", type=float, default=20.0, help="query length (s)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=500)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        sys.exit(f"error: {args.checkpoint}: no checkpoint (run 'make demo', or --checkpoint)")
    audio, catalogue = build(args)
    total = 20 + args.clients + args.sequential
    clips = make_clips(audio, catalogue, total, args.clip, 1, os.path.join(args.out, "clips"))
    base, loaded, serial = clips[:20], clips[20 : 20 + args.clients], clips[20 + args.clients :]
    process, url = start_server(catalogue)
    try:
        unloaded = report("baseline", [query(url, c) for c in base], base, args.hop)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda c: query(url, c), loaded))
        wall = time.perf_counter() - start
        p50 = report(f"{args.clients} at once", results, loaded, args.hop)
        print(
            f"{'':<12} all {args.clients} answered in {wall:.1f} s; p50 / unloaded p50 = "
            f"{p50 / unloaded:.1f}x"
        )
        memory, results = [], []
        for i, clip in enumerate(serial, 1):
            results.append(query(url, clip))
            if i % 50 == 0:
                memory.append((i, rss_mb(process.pid)))
        report("sequential", results, serial, args.hop)
        shown = ", ".join(f"{n}: {m:.0f}" for n, m in memory)
        print(f"server memory (MB) after n queries: {shown}")
        print(
            f"memory after {memory[-1][0]} / after {memory[0][0]} queries = "
            f"{memory[-1][1] / memory[0][1]:.3f}"
        )
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
