"""The metadata file that preprocessing writes and training, evaluation and the demo read: a
torch file ``{"info": {key: song dict}, "split": {split: {clique: [keys]}}, "about": {...}}``
(the original's ``[info, splits]`` list is read too). Kept apart from the dataset parsers of
``lib.preproc``, so that readers of the file do not depend on them.
"""

import time

from lib.errors import RunError
from lib.files import atomic_torch_save, safe_torch_load

SPLITS = ("train", "valid", "test")
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
    data = safe_torch_load(path, error=DatasetError, what="metadata file")
    if isinstance(data, dict) and "info" in data and "split" in data:
        info, splits = data["info"], data["split"]
    elif isinstance(data, (list, tuple)) and len(data) == 2:
        info, splits = data
    else:
        raise DatasetError(f"{path}: expected {{'info': ..., 'split': ...}} or [info, splits]")
    if not isinstance(info, dict) or not isinstance(splits, dict):
        raise DatasetError(f"{path}: 'info' and 'split' must be dicts")
    return info, splits
