"""Training excerpts with and without the decoded-audio cache (``data.decoded_cache``): 20 s at
8 kHz from random starts in 44.1 kHz stereo songs (mp3 and m4a, as user collections are),
decoded each time (``load_audio``) against read from the cache, cold (the first read decodes the
whole song and writes it) and warm. Prints the time per excerpt, the ratio, and after how many
excerpts per song the cold first read has paid for itself (training reads each version about
``n_per_class`` times per epoch).

    .venv/bin/python -m benchmarks.bench_decoded_cache [--songs 6] [--seconds 240] [--reads 8]
"""

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.common import write_music
from lib.audio import load_audio
from lib.audio_cache import DecodedAudioCache

RATE = 8000
EXCERPT = 20.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=6, help="half mp3, half m4a")
    parser.add_argument("--seconds", type=float, default=240, help="length of each song")
    parser.add_argument("--reads", type=int, default=8, help="excerpts read per song and way")
    return parser.parse_args(argv)


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        songs = []
        for i in range(args.songs):
            songs.append(os.path.join(folder, f"song{i}{'.mp3' if i % 2 == 0 else '.m4a'}"))
            write_music(songs[-1], args.seconds, seed=i)
        cache = DecodedAudioCache(os.path.join(folder, "decoded"), RATE)
        load_audio(songs[0], RATE, start=0, duration=1)  # warm-up
        plain, cold, warm = [], [], []
        for path in songs:
            starts = rng.uniform(0, args.seconds - EXCERPT, args.reads)
            _, seconds = timed(lambda: cache.load(path, start=starts[0], duration=EXCERPT))
            cold.append(seconds)
            for start in starts:
                x, seconds = timed(lambda: load_audio(path, RATE, start=start, duration=EXCERPT))
                plain.append(seconds)
                y, seconds = timed(lambda: cache.load(path, start=start, duration=EXCERPT))
                warm.append(seconds)
                assert x.shape == y.shape  # the values: tests/test_audio_cache.py
    plain_ms, warm_ms, cold_ms = (1000 * float(np.median(t)) for t in (plain, warm, cold))
    print(
        f"{EXCERPT:.0f} s excerpts at {RATE} Hz from {args.songs} songs of {args.seconds:.0f} s "
        f"(44.1 kHz stereo mp3 / m4a), median of {len(plain)} reads:"
    )
    print(f"  decoded each time:          {plain_ms:8.1f} ms per excerpt")
    print(f"  from the cache (warm):      {warm_ms:8.1f} ms per excerpt")
    print(f"  ratio:                      {plain_ms / warm_ms:8.1f}x")
    print(f"  first read of a song (cold): {cold_ms:7.1f} ms (whole song decoded and written)")
    print(f"  paid back after:            {cold_ms / (plain_ms - warm_ms):8.1f} excerpts per song")


if __name__ == "__main__":
    main()
