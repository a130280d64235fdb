"""Helpers shared by the benchmarks: synthetic audio files like the ones users have, and scratch
folders that go when the benchmark does."""

import atexit
import shutil
import tempfile

import numpy as np

from lib import synth
from lib.audio import write_audio


def music_like(seconds, seed=0, sr=44100):
    """A synthetic song (stereo, 44.1 kHz, as YouTube audio) of about ``seconds`` seconds."""
    rng = np.random.default_rng(seed)
    piece = synth.compose(rng, target_seconds=seconds)
    version = synth.vary(piece, rng)
    x = synth.render(piece, version, sr, rng)
    while len(x) < seconds * sr:  # tempo changes may make it shorter: loop it
        x = np.concatenate([x, x])
    x = x[: int(seconds * sr)]
    return np.stack([x, 0.8 * x])


def write_music(path, seconds, seed=0, sr=44100):
    write_audio(path, music_like(seconds, seed, sr), sr)


def scratch_folder(prefix):
    """A new folder under the system's temporary folder, removed when the process exits (also
    after an error or Ctrl-C): a benchmark's files (full-size checkpoints, exports, catalogues)
    take gigabytes."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
