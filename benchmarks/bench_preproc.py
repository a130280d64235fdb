"""Audio checking speed of data_preproc.py: the default quick check (header + two short probes)
against decoding every file whole (--check full), on 200 three-minute m4a files.

    .venv/bin/python -m benchmarks.bench_preproc [--files 200] [--njobs 2]
"""

import argparse
import os
import shutil
import tempfile
import time

from benchmarks.common import write_music
from lib import preproc


def make_files(folder, nfiles, ndistinct, seconds):
    """``nfiles`` files in the folder layout; ``ndistinct`` different encodes, copied around."""
    sources = []
    for i in range(ndistinct):
        path = os.path.join(folder, "src", f"s{i}.m4a")
        write_music(path, seconds, seed=i)
        sources.append(path)
    for i in range(nfiles):
        work = os.path.join(folder, "audio", f"work{i // 2:03d}")
        os.makedirs(work, exist_ok=True)
        shutil.copy(sources[i % ndistinct], os.path.join(work, f"v{i % 2}.m4a"))


def time_check(audio, mode, njobs):
    parsed = preproc.parse_folder(audio, "m4a", (0, 0, 1))
    start = time.perf_counter()
    good, bad = preproc.check_all(parsed, audio, mode=mode, njobs=njobs, progress=False)
    elapsed = time.perf_counter() - start
    assert not bad, bad
    return len(good) / elapsed, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--njobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        make_files(folder, args.files, args.distinct, args.seconds)
        print(
            f"made {args.files} m4a files of {args.seconds:.0f} s (44.1 kHz stereo AAC) "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        audio = os.path.join(folder, "audio")
        time_check(audio, "quick", args.njobs)  # warm-up: page cache, worker start
        quick, tq = time_check(audio, "quick", args.njobs)
        full, tf = time_check(audio, "full", args.njobs)
    print(f"njobs={args.njobs}")
    print(f"  quick check (default): {quick:7.1f} files/s  ({tq:6.1f} s)")
    print(f"  full decode:           {full:7.1f} files/s  ({tf:6.1f} s)")
    print(f"  ratio quick/full:      {quick / full:7.1f}x   (target >= 5x)")


if __name__ == "__main__":
    main()
