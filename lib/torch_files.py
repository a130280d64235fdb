"""Torch files read and written safely: ``torch.load`` that only rebuilds data, never runs
pickled code, and ``torch.save`` through ``files.atomic_write``.

Loading always uses ``torch.load(weights_only=True)``: only tensors, plain containers and the few
data-only classes in ``ALLOWED_GLOBALS`` can be rebuilt. Any other pickled object (a function to
call, an arbitrary class) is refused with the caller's error before anything runs.
"""

import os
import pickle
import pickletools
import re
import typing
from collections import defaultdict

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

from lib.files import LoadError, atomic_write

PICKLE_OPCODES = {op.code for op in pickletools.opcodes}


def _numpy_globals():
    scalar = np._core.multiarray.scalar
    found = [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),  # name used by checkpoints written with numpy 1
        np.dtype,
    ]
    found += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return found


# Everything a pickled OmegaConf config, an optimiser/scheduler state or a numpy scalar needs:
# data holders and builtin container types. Nothing here can run code when rebuilt.
ALLOWED_GLOBALS = [
    DictConfig,
    ListConfig,
    ContainerMetadata,
    Metadata,
    AnyNode,
    StringNode,
    IntegerNode,
    FloatNode,
    BooleanNode,
    typing.Any,
    defaultdict,
    dict,
    list,
    int,
    float,
    str,
    bool,
    *_numpy_globals(),
]


# What numpy arrays need besides ALLOWED_GLOBALS: the array class and its rebuilding function
# (it allocates an array of a shape and dtype; the data then come as plain bytes or as a list
# that the same restricted unpickler reads). Only ``safe_torch_load(allow_arrays=True)`` uses it.
ARRAY_GLOBALS = [
    bytes,  # an empty array's data
    np.ndarray,
    np._core.multiarray._reconstruct,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),  # numpy 1 files
]


def atomic_torch_save(obj, path):
    """``torch.save`` of ``obj`` to ``path``, atomically (see ``atomic_write``)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def safe_torch_load(
    path, map_location="cpu", error=None, what="file", allow_arrays=False, refused_hint=""
):
    """``torch.load(weights_only=True)`` with ``ALLOWED_GLOBALS`` (and ``ARRAY_GLOBALS`` with
    ``allow_arrays``); every failure becomes ``error`` (default ``LoadError``) with a message
    naming the file and the problem. ``refused_hint`` ends the message of a refused file (what
    the user can do about it)."""
    error = error or LoadError
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found")
    allowed = ALLOWED_GLOBALS + (ARRAY_GLOBALS if allow_arrays else [])
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        offending = _offending_global(err) if isinstance(err, pickle.UnpicklingError) else None
        if offending:
            accepted = "tensors, containers, configs, numbers"
            accepted += ", arrays" if allow_arrays else ""
            raise error(
                f"{path}: refused to load: it contains {offending}, which is not plain data "
                f"(only {accepted} are accepted){refused_hint}"
            ) from err
        detail = type(err).__name__
        if not isinstance(err, pickle.UnpicklingError):  # torch's text there is only advice
            detail += f": {_last_line(err)}"
        raise error(
            f"{path}: not a readable {what} (corrupt or not a torch file; {detail})"
        ) from err


def _offending_global(err):
    """What torch's weights-only unpickler refused: a named class/function or a pickle
    instruction outside its safe subset. None when the error is something else."""
    text = str(err)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"a pickled reference to {match.group(1)}"
    match = re.search(r"Unsupported operand (\d+)", text)
    if match and chr(int(match.group(1))) in PICKLE_OPCODES:  # else: not a pickle at all
        return f"a pickle instruction outside the safe subset (opcode {match.group(1)})"
    return None


def _last_line(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else ""
