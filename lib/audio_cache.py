"""Decoded audio kept on disk, so that training decodes each file once instead of every epoch.

Training draws a new excerpt of every version each epoch, and on a CPU decoding them (an mp3
costs about 25 ms per 20 s excerpt at 8 kHz) takes as long as the network's step. With the cache
the first read of a file decodes all of it at the dataset's rate and stores it as float16
(``.npy``, 57.6 MB per hour of audio at 8 kHz); later reads are slices of a memory map.

An excerpt from the cache equals ``load_audio``'s excerpt of the same file up to float16
rounding (relative error below 5e-4), because ``load_audio`` crops excerpts from the same grid
as a full decode. Entries are named after the file's absolute path, size and modification time:
a replaced or edited file is decoded again. Entries are written atomically, so processes
(DataLoader workers, DDP ranks) may share a folder and an interrupted run leaves no half entry.
"""

import hashlib
import os

import numpy as np

from lib.audio import AudioError, check_excerpt, load_audio
from lib.files import atomic_write


class DecodedAudioCache:
    def __init__(self, folder, samplerate, seconds=None):
        """folder: where entries go (made on first write); samplerate: Hz of the stored audio;
        seconds: store only the first ``seconds`` of each file (None: all of it), for training
        whose excerpts all lie there (``data.maxlen``): long songs then cost less to decode and
        to keep."""
        self.folder = os.fspath(folder)
        self.samplerate = int(samplerate)
        self.seconds = None if seconds is None else float(seconds)

    def entry_path(self, path):
        """The cache file for audio file ``path`` as it is now (size and modification time)."""
        status = os.stat(path)
        source = f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}"
        if self.seconds is not None:
            source += f"\0first {self.seconds!r} s"
        name = hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self.folder, name[:2], f"{name}.npy")

    def load(self, path, start=0.0, duration=None):
        """Like ``load_audio(path, samplerate, start, duration)``: (T,) float32 mono excerpt,
        start and duration in seconds, T = round(duration * samplerate) unless the file ends
        earlier. Raises AudioError for a file that cannot be decoded or an empty excerpt."""
        path = os.fspath(path)
        start = check_excerpt(start, duration)
        end = None if duration is None else start + duration
        if self.seconds is not None and (end is None or end > self.seconds + 1e-6):
            end = "the end" if end is None else f"{end:g} s"
            raise ValueError(f"excerpt until {end}: this cache keeps the first {self.seconds:g} s")
        full = self._full(path)
        first = round(start * self.samplerate)
        last = None if duration is None else first + round(duration * self.samplerate)
        x = np.asarray(full[first:last], dtype=np.float32)
        if x.size == 0:
            raise AudioError(path, f"no audio samples from {start:.2f} s on")
        return x

    def _full(self, path):
        """The file (its first ``seconds``) at ``samplerate``: the stored entry (memory-mapped)
        or a new decode."""
        if not os.path.isfile(path):
            return load_audio(path, samplerate=self.samplerate)  # raises its AudioError
        entry = self.entry_path(path)
        try:
            return np.load(entry, mmap_mode="r")
        except (OSError, ValueError):
            pass  # not stored yet, or damaged by another tool: decode and (re)write it
        # a margin of samples: a rounded excerpt start must not cut its last sample short
        keep = None if self.seconds is None else self.seconds + 0.01
        full = load_audio(path, samplerate=self.samplerate, duration=keep)
        stored = full.astype(np.float16)
        atomic_write(entry, lambda handle: np.save(handle, stored))
        return stored
