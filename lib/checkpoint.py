"""Checkpoint files: atomic saving and loading without executing pickled code.

A checkpoint is a dict with the original's keys: ``model`` (state dict), ``optim``, ``sched``,
``conf``, ``epoch`` (completed epochs), ``lr`` and ``cost_best``. This project stores ``conf`` as a
plain dict; the original pickled an OmegaConf ``DictConfig``, which is still read.

Loading always uses ``torch.load(weights_only=True)``: only tensors, plain containers and the few
data-only classes in ``ALLOWED_GLOBALS`` can be rebuilt. Any other pickled object (a function to
call, an arbitrary class) is refused with ``CheckpointError`` before anything runs.
"""

import glob
import os
import pickle
import pickletools
import re
import tempfile
import typing
from collections import defaultdict

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

# wrappers that DDP / Fabric / torch.compile put in front of parameter names
WRAPPER_PREFIXES = ("module.", "_forward_module.", "_orig_mod.")
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


class CheckpointError(Exception):
    """A checkpoint could not be read, was refused, or does not fit the model."""


class WriteError(Exception):
    """A file could not be written (disk full, file too large, no permission, read-only disk);
    the file that was there before, if any, is unchanged. Not an ``OSError`` on purpose: callers
    that skip one bad input and go on must not go on writing to a full disk."""


def save_checkpoint(state, path):
    """Write a checkpoint dict atomically, with its config (if any) as plain data."""
    state = dict(state)
    if isinstance(state.get("conf"), (DictConfig, ListConfig)):
        state["conf"] = OmegaConf.to_container(state["conf"], resolve=True)
    atomic_torch_save(state, path)


def atomic_torch_save(obj, path):
    """``torch.save`` of ``obj`` to ``path``, atomically (see ``atomic_write``)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path, write, text=False):
    """Call ``write(handle)`` on a temporary file in the same folder, flush it to disk, then
    rename it over ``path``. An interrupted or failed write leaves the previous file intact and
    no temporary; a failure of the file system (full, read-only, no permission) raises
    ``WriteError`` naming ``path``. ``text`` opens the temporary in text mode (UTF-8, no newline
    translation)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    mode = {"mode": "w", "encoding": "utf-8", "newline": ""} if text else {"mode": "wb"}
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; give what open() would have given
        with os.fdopen(fd, **mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error_behind(err)
        if cause is None or isinstance(err, KeyboardInterrupt):
            raise
        raise write_failure(path, cause) from err
    _fsync_folder(folder)


def write_failure(path, cause):
    """The ``WriteError`` for ``path`` whose writing failed with the ``OSError`` ``cause``."""
    return WriteError(
        f"{path}: could not be written ({cause.strerror or cause}); the file there before, if "
        "any, is unchanged: make room or fix the folder, then run the same command again"
    )


def _os_error_behind(err):
    """The ``OSError`` that ``err`` is or was raised while handling (torch.save turns a failed
    write into a RuntimeError about zip positions), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def remove_stale_temporaries(folder, names=("*.ckpt", "configuration.yaml")):
    """Delete the temporaries that a process killed inside ``atomic_write`` left in ``folder``
    for files matching ``names``; returns their paths. Only for a folder no other process is
    writing to."""
    stale = []
    for name in names:
        stale += glob.glob(os.path.join(glob.escape(os.fspath(folder)), f"{name}.*.tmp"))
    for path in sorted(stale):
        os.remove(path)
    return sorted(stale)


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


def safe_torch_load(path, map_location="cpu", error=None, what="checkpoint file"):
    """``torch.load(weights_only=True)`` with ``ALLOWED_GLOBALS``; every failure becomes ``error``
    (default ``CheckpointError``) with a message naming the file and the problem."""
    error = error or CheckpointError
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        offending = _offending_global(err) if isinstance(err, pickle.UnpicklingError) else None
        if offending:
            raise error(
                f"{path}: refused to load: it contains {offending}, which is not plain data "
                "(only tensors, containers, configs and numbers are accepted)"
            ) from err
        detail = type(err).__name__
        if not isinstance(err, pickle.UnpicklingError):  # torch's text there is only advice
            detail += f": {_last_line(err)}"
        raise error(
            f"{path}: not a readable {what} (corrupt or not a torch file; {detail})"
        ) from err


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by this project or by the original CLEWS code.

    Returns a dict; ``conf``, when present, is an OmegaConf ``DictConfig``.
    Raises ``CheckpointError`` for a missing, unreadable or untrusted file.
    """
    state = safe_torch_load(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of states, found {type(state).__name__}")
    if isinstance(state.get("conf"), dict):
        state["conf"] = OmegaConf.create(state["conf"])
    return state


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


def translate_legacy_names(model, weights):
    """``weights`` with the names this project used before it took the original's (mapped by the
    model's ``legacy_key``) renamed, when that is what makes them fit ``model``; else unchanged.
    Returns (weights, whether they were renamed)."""
    expected = model.state_dict()
    if set(weights) == set(expected):
        return weights, False
    renamed = {model.legacy_key(key): value for key, value in weights.items()}
    if len(renamed) == len(weights) and set(renamed) == set(expected):
        return renamed, True
    return weights, False


def optimizer_state(model, state):
    """The ``optim`` entry of a full checkpoint, for an optimiser over ``model.parameters()``.
    Optimiser states are indexed by parameter position; a checkpoint saved with this project's
    earlier names may have held the parameters in another order (CoverHunter-C's), so its
    indices are moved to the positions of the same parameters now."""
    optim = state["optim"]
    weights = _strip_wrapper_prefixes(dict(model_state_dict(state)))
    _, renamed = translate_legacy_names(model, weights)
    if not renamed:
        return optim
    names = [name for name, _ in model.named_parameters()]
    old_order = [model.legacy_key(k) for k in weights if model.legacy_key(k) in set(names)]
    if old_order == names or len(optim.get("param_groups", [])) != 1:
        return optim
    position = {name: i for i, name in enumerate(names)}
    moved = {position[old_order[int(i)]]: value for i, value in optim["state"].items()}
    group = dict(optim["param_groups"][0], params=list(range(len(names))))
    return {"state": moved, "param_groups": [group]}


def load_model_state(model, state, source="checkpoint"):
    """Load weights into ``model`` strictly, accepting DDP/compile name prefixes, scalar
    parameters saved as shape () or (1,), and the names of this project's checkpoints from before
    it took the original's module names. Raises ``CheckpointError`` naming what does not fit."""
    weights = _strip_wrapper_prefixes(dict(model_state_dict(state)))
    weights, _ = translate_legacy_names(model, weights)
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
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 5 else ""
                )
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__module__}.{type(model).__name__} "
            f"(a checkpoint of another model or configuration?); " + "; ".join(parts)
        )
    model.load_state_dict(weights, strict=True)
    return model


def run_config(checkpoint, state, conf_path=None):
    """The config of a trained model: ``conf_path`` if given, else ``configuration.yaml`` beside
    the checkpoint (as the original expected), else the one stored in the checkpoint.
    Returns (DictConfig, where it came from); ``ConfigError`` when there is none."""
    from lib.config import ConfigError, load_yaml

    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "configuration.yaml")
    if conf_path:
        conf, source = load_yaml(conf_path), os.fspath(conf_path)
    elif os.path.isfile(beside):
        conf, source = load_yaml(beside), beside
    elif state.get("conf") is not None:
        conf, source = OmegaConf.create(state["conf"]), f"{checkpoint} (stored config)"
    else:
        raise ConfigError(f"{checkpoint}: no conf given, no {beside} and no stored config")
    for key in ("model", "data"):
        if key not in conf:
            raise ConfigError(f"{source}: no '{key}' section")
    return conf, source


def load_trained_model(checkpoint, conf_path=None, device="cpu"):
    """(model in eval mode on ``device``, its config, config source) from a checkpoint of this
    project or of the original code."""
    from lib.config import ConfigError
    from lib.model_base import build_model

    state = load_checkpoint(checkpoint)
    conf, source = run_config(checkpoint, state, conf_path)
    try:
        model = build_model(conf.model, sr=int(conf.data.get("samplerate", 16000)))
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err
    load_model_state(model, state, source=os.fspath(checkpoint))
    return model.to(device).eval(), conf, source
