"""The metadata file that preprocessing writes and training, evaluation and the demo read: a
torch file ``{"info": {key: song dict}, "split": {split: {clique: [keys]}}, "about": {...}}``
(the original's ``[info, splits]`` list is read too). Kept apart from the dataset parsers of
``lib.preproc``, so that readers of the file do not depend on them.
"""

import math
import time

import numpy as np
import torch

from lib.errors import RunError
from lib.torch_files import atomic_torch_save, safe_torch_load

# what to do about audio files found missing or unreadable after preprocessing
RECHECK_HINT = "run data_preproc.py again (--check=full decodes every file) to drop them"


class DatasetError(RunError):
    """A metadata or split file is missing or malformed; the message names the file."""


def save_metadata(path, info, splits, about=None):
    atomic_torch_save(
        {
            "info": info,
            "split": splits,
            "about": dict(about or {}, created=time.strftime("%Y-%m-%d %H:%M:%S")),
        },
        path,
    )


def load_metadata(path):
    """(info, splits) from a metadata file in this project's/the fork's dict form or the original's
    [info, splits] list; a malformed or untrusted file raises ``DatasetError``."""
    hint = f"; make a plain copy once with: {CONVERT_COMMAND.format(path=path)}"
    data = safe_torch_load(path, error=DatasetError, what="metadata file", refused_hint=hint)
    return _info_and_splits(data, path)


def _info_and_splits(data, path):
    if isinstance(data, dict) and "info" in data and "split" in data:
        info, splits = data["info"], data["split"]
    elif isinstance(data, (list, tuple)) and len(data) == 2:
        info, splits = data
    else:
        raise DatasetError(f"{path}: expected {{'info': ..., 'split': ...}} or [info, splits]")
    if not isinstance(info, dict) or not isinstance(splits, dict):
        raise DatasetError(f"{path}: 'info' and 'split' must be dicts")
    return info, splits


# Metadata files written by other pipelines (the DiVers authors' ``divers.pt``) may hold numpy
# arrays and scalars, which the loader above refuses: the conversion reads them (still without
# running anything from the file) and writes plain Python values.
CONVERT_COMMAND = "python data_preproc.py --convert={path} --fn_out=<plain copy>.pt"


def plain_value(value):
    """``value`` with numpy arrays as lists, numpy scalars as Python numbers and tuples as
    lists, recursively; dict keys become text when they are numpy scalars."""
    if isinstance(value, np.ndarray):
        return [plain_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {plain_value(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value


def _not_plain(value):
    """The first value inside ``value`` that is not text, a number, a bool, None, a list or a
    dict (tensors pass: the loader reads them); None when there is none."""
    if isinstance(value, (str, int, float, bool, type(None), torch.Tensor)):
        return None
    if isinstance(value, dict):
        value = list(value.keys()) + list(value.values())
    if isinstance(value, list):
        return next((odd for odd in map(_not_plain, value) if odd is not None), None)
    return value


def _is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def convert_metadata(source, target, trust=False):
    """Write ``target``, a metadata file of plain values, from ``source`` (a metadata file that
    may hold numpy arrays and scalars). A song field that is None or NaN (a table's missing
    value) is left out, as data_preproc.py leaves out nulls. ``trust`` reads ``source`` with
    full pickle, which runs whatever code the file names: only for a file whose maker you
    trust, when the safe reading refuses it. Returns the number of songs."""
    if trust:
        try:
            data = torch.load(source, map_location="cpu", weights_only=False)
        except Exception as err:
            raise DatasetError(f"{source}: not a readable metadata file ({err})") from err
    else:
        hint = "; if you trust its maker, add --trust_pickle (full pickle: it can run code)"
        data = safe_torch_load(
            source, error=DatasetError, what="metadata file", allow_arrays=True, refused_hint=hint
        )
    info, splits = _info_and_splits(data, source)
    info = plain_value(info)
    for key, song in info.items():
        if not isinstance(song, dict):
            raise DatasetError(f"{source}: song {key!r} is not a dict of fields")
        info[key] = {name: value for name, value in song.items() if not _is_missing(value)}
        for name, value in info[key].items():
            odd = _not_plain(value)
            if odd is not None:
                raise DatasetError(
                    f"{source}: song {key!r}, field {name!r} holds a {type(odd).__name__}, which "
                    "is not plain data (text, numbers, lists, dicts): nothing written"
                )
    splits = plain_value(splits)
    about = data.get("about", {}) if isinstance(data, dict) else {}
    save_metadata(target, info, splits, dict(plain_value(about), converted_from=str(source)))
    return len(info)
