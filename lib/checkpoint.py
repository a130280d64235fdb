"""Checkpoint files: atomic saving and loading without executing pickled code.

A checkpoint is a dict with the original's keys: ``model`` (state dict), ``optim``, ``sched``,
``conf``, ``epoch`` (completed epochs), ``lr`` and ``cost_best``. This project stores ``conf`` as a
plain dict; the original pickled an OmegaConf ``DictConfig``, which is still read.

Loading always uses ``torch.load(weights_only=True)``: only tensors, plain containers and the few
data-only classes in ``ALLOWED_GLOBALS`` can be rebuilt. Any other pickled object (a function to
call, an arbitrary class) is refused with ``CheckpointError`` before anything runs.
"""

import os
import pickle
import re
import tempfile
import typing
from collections import defaultdict

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

STATE_KEYS = ("model", "optim", "sched", "conf", "epoch", "lr", "cost_best")
# wrappers that DDP / Fabric / torch.compile put in front of parameter names
WRAPPER_PREFIXES = ("module.", "_forward_module.", "_orig_mod.")


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


class CheckpointError(Exception):
    """A checkpoint could not be read, was refused, or does not fit the model."""


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed to
    disk, then renamed over the target. An interrupted save leaves the previous file intact."""
    path = os.fspath(path)
    state = dict(state)
    if isinstance(state.get("conf"), (DictConfig, ListConfig)):
        state["conf"] = OmegaConf.to_container(state["conf"], resolve=True)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by this project or by the original CLEWS code.

    Returns a dict; ``conf``, when present, is an OmegaConf ``DictConfig``.
    Raises ``CheckpointError`` for a missing, unreadable or untrusted file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        offending = _offending_global(err) if isinstance(err, pickle.UnpicklingError) else None
        if offending:
            raise CheckpointError(
                f"{path}: refused to load: it contains a pickled reference to {offending}, which "
                "is not plain data (only tensors, containers, configs and numbers are accepted)"
            ) from err
        detail = type(err).__name__
        if not isinstance(err, pickle.UnpicklingError):  # torch's text there is only advice
            detail += f": {_last_line(err)}"
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or not a torch file; {detail})"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of states, found {type(state).__name__}")
    if isinstance(state.get("conf"), dict):
        state["conf"] = OmegaConf.create(state["conf"])
    return state


def _offending_global(err):
    """The class or function named in torch's refusal message (e.g. "posix.system"), or None."""
    match = re.search(r"GLOBAL ([\w.]+)", str(err))
    return match.group(1) if match else None


def _last_line(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def model_state_dict(state):
    """The model weights of a checkpoint dict (full state or weights-only ``{"model": ...}``),
    or the dict itself when it already is a bare state dict."""
    if "model" in state and isinstance(state["model"], dict):
        return state["model"]
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise CheckpointError("checkpoint has no 'model' entry with weights")


def _strip_wrapper_prefixes(weights):
    changed = True
    while changed and weights:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in weights):
                weights = {k[len(prefix) :]: v for k, v in weights.items()}
                changed = True
    return weights


def load_model_state(model, state, source="checkpoint"):
    """Load weights into ``model`` strictly, accepting DDP/compile name prefixes and scalar
    parameters saved as shape () or (1,). Raises ``CheckpointError`` naming what does not fit."""
    weights = _strip_wrapper_prefixes(dict(model_state_dict(state)))
    expected = model.state_dict()
    mismatched = []
    for key, value in weights.items():
        if key not in expected or value.shape == expected[key].shape:
            continue
        if value.numel() == 1 and expected[key].numel() == 1:
            weights[key] = value.reshape(expected[key].shape)
        else:
            mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(expected[key].shape)}")
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__module__}.{type(model).__name__} "
            f"(a checkpoint of another model or configuration?); " + "; ".join(parts)
        )
    model.load_state_dict(weights, strict=True)
    return model
