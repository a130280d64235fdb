"""Time to load one 150 s training excerpt at a random start from a 5-minute m4a, as the dataset
does (seek, decode the excerpt, resample to 16 kHz), against decoding the whole file and cropping.

    .venv/bin/python -m benchmarks.bench_loader [--repeats 10]
"""

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.common import write_music
from lib.audio import get_info, load_audio


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--excerpt", type=float, default=150)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "song.m4a")
        write_music(path, args.seconds)
        duration = get_info(path).duration
        starts = rng.uniform(0, duration - args.excerpt, args.repeats)
        load_audio(path, 16000, start=0, duration=1)  # warm-up
        excerpt_times, whole_times = [], []
        for start in starts:
            t0 = time.perf_counter()
            x = load_audio(path, 16000, start=start, duration=args.excerpt)
            excerpt_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            whole = load_audio(path, 16000)
            first = round(start * 16000)
            y = whole[first : first + round(args.excerpt * 16000)]
            whole_times.append(time.perf_counter() - t0)
            assert len(x) == len(y)
            # not bit-exact: FFmpeg's AAC decoder synthesises noise bands from its own RNG
            assert np.corrcoef(x, y)[0, 1] > 0.999
    excerpt_ms, whole_ms = 1000 * np.median(excerpt_times), 1000 * np.median(whole_times)
    print(
        f"{args.excerpt:.0f} s excerpt from a {duration:.0f} s 44.1 kHz stereo m4a, "
        f"median of {args.repeats} random starts:"
    )
    print(f"  seek + decode excerpt:  {excerpt_ms:7.1f} ms")
    print(f"  decode whole + crop:    {whole_ms:7.1f} ms")
    print(f"  ratio:                  {whole_ms / excerpt_ms:7.2f}x")


if __name__ == "__main__":
    main()
