"""Precomputed pitch-class features (CREMA-PCP) of the feature-only datasets: Da-TACOS (one h5
file per performance) and Cover1000 as the cover-song tutorial packages it (one hdf5 file keyed
by performance id); ``../shared/reference/move_datacos.md`` sections 2, 6 and 7.

Every reader returns float32 (frames, 12) at MOVE's rate, one frame every 4096 samples at 44.1 kHz
(``PCP_RATE``, about 10.77 frames/s): Da-TACOS stores CREMA at a 512-sample hop with each frame
repeated 8 times, so every 8th frame is kept; the tutorial's Cover1000 file is at CREMA's own
rate. The pitch axis is the one of length 12, whichever way a file stores it (Da-TACOS's
benchmark subset is time-major, its cover-analysis subset pitch-major).
"""

import h5py
import numpy as np

from lib.errors import RunError

PITCH_CLASSES = 12
PCP_RATE = 44100 / 4096  # frames per second
DATACOS_KEY = "crema"
DATACOS_STEP = 8  # stored 512-sample frames per 4096-sample frame


class FeatureError(RunError):
    """A feature file could not be read or does not hold a pitch-class sequence. ``path`` (the
    file, with the array's key where it matters) and ``reason`` are kept as attributes."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def oriented(array, where):
    """``array`` as (frames, 12) float32, its pitch axis found by length; ``FeatureError``
    naming ``where`` when it is not a 2-D array with exactly one axis of 12."""
    array = np.asarray(array)
    if array.ndim != 2 or PITCH_CLASSES not in array.shape:
        raise FeatureError(
            where,
            "expected a (frames, 12) or (12, frames) pitch-class array, found shape "
            f"{array.shape}",
        )
    if array.shape == (PITCH_CLASSES, PITCH_CLASSES):
        raise FeatureError(where, "a 12 x 12 array: too short to tell time from pitch")
    out = array if array.shape[1] == PITCH_CLASSES else array.T
    if not np.isfinite(out).all():
        raise FeatureError(where, "non-finite values in the pitch classes")
    return np.ascontiguousarray(out, dtype=np.float32)


def _decoded(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_h5(path, key, missing):
    """(the array ``key`` of the h5 file ``path``, its root attributes); ``missing`` names what
    an absent key is in the error."""
    try:
        with h5py.File(path, "r") as handle:
            if key not in handle:
                raise FeatureError(path, f"no {missing} {key!r} (keys: {', '.join(handle)})")
            return handle[key][()], dict(handle.attrs)
    except OSError as err:
        raise FeatureError(path, f"not a readable h5 file ({err})") from None


def read_datacos(path, key=DATACOS_KEY):
    """(pitch classes (frames, 12) at ``PCP_RATE``, work id, performance id) of a Da-TACOS h5
    file (ids from its ``label`` / ``track_id`` attributes, None where absent)."""
    array, attrs = _read_h5(path, key, "array")
    pcp = oriented(array, f"{path} [{key}]")[::DATACOS_STEP]
    label, track = attrs.get("label"), attrs.get("track_id")
    return (
        np.ascontiguousarray(pcp),
        None if label is None else _decoded(label),
        None if track is None else _decoded(track),
    )


def read_cover1000(path, key):
    """Pitch classes (frames, 12) at ``PCP_RATE`` of performance ``key`` in the tutorial's
    ``<base>_feat.hdf5``."""
    return oriented(_read_h5(path, key, "performance")[0], f"{path} [{key}]")

READERS = ("datacos", "cover1000")


def read_song(path, reader, key=None):
    """Pitch classes (frames, 12) at ``PCP_RATE`` of one song of a feature dataset: ``reader``
    is its metadata's ``features`` (``datacos`` or ``cover1000``), ``key`` its ``feature_key``."""
    if reader == "datacos":
        return read_datacos(path)[0]
    if reader == "cover1000":
        return read_cover1000(path, key)
    raise FeatureError(path, f"unknown feature reader {reader!r} (one of {', '.join(READERS)})")
