"""Checkpoint files: saving (atomic) and loading (no pickled code runs, see ``lib.files``), the
weights of a checkpoint into a model, and a trained model with its config.

A checkpoint is a dict with the original's keys: ``model`` (state dict), ``optim``, ``sched``,
``conf``, ``epoch`` (completed epochs), ``lr`` and ``cost_best``. This project stores ``conf`` as a
plain dict; the original pickled an OmegaConf ``DictConfig``, which is still read.
"""

import os

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from lib.config import EVALUATION_SECTIONS, ConfigError, load_yaml, typed_run_config
from lib.errors import RunError, UsageError
from lib.torch_files import atomic_torch_save, safe_torch_load
from lib.model_base import build_model

# wrappers that DDP / Fabric / torch.compile put in front of parameter names
WRAPPER_PREFIXES = ("module.", "_forward_module.", "_orig_mod.")


class CheckpointError(RunError):
    """A checkpoint could not be read, was refused, or does not fit the model."""


def save_checkpoint(state, path):
    """Write a checkpoint dict atomically, with its config (if any) as plain data."""
    state = dict(state)
    if isinstance(state.get("conf"), (DictConfig, ListConfig)):
        state["conf"] = OmegaConf.to_container(state["conf"], resolve=True)
    atomic_torch_save(state, path)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by this project or by the original CLEWS code.

    Returns a dict; ``conf``, when present, is an OmegaConf ``DictConfig``.
    Raises ``CheckpointError`` for a missing, unreadable or untrusted file.
    """
    state = safe_torch_load(path, map_location, error=CheckpointError, what="checkpoint file")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of states, found {type(state).__name__}")
    if isinstance(state.get("conf"), dict):
        state["conf"] = OmegaConf.create(state["conf"])
    return state


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
    weights = _strip_wrapper_prefixes(model.select_weights(dict(model_state_dict(state))))
    _, renamed = translate_legacy_names(model, weights)
    if not renamed:
        return optim
    names = [name for name, _ in model.named_parameters()]
    position = {name: i for i, name in enumerate(names)}
    old_order = [key for key in map(model.legacy_key, weights) if key in position]
    if old_order == names or len(optim.get("param_groups", [])) != 1:
        return optim
    moved = {position[old_order[int(i)]]: value for i, value in optim["state"].items()}
    group = dict(optim["param_groups"][0], params=list(range(len(names))))
    return {"state": moved, "param_groups": [group]}


def load_model_state(model, state, source="checkpoint"):
    """Load weights into ``model`` strictly, accepting DDP/compile name prefixes, scalar
    parameters saved as shape () or (1,), and the names of this project's checkpoints from before
    it took the original's module names. Raises ``CheckpointError`` naming what does not fit."""
    weights = _strip_wrapper_prefixes(model.select_weights(dict(model_state_dict(state))))
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
    """The typed config of a trained model: ``conf_path`` if given, else ``configuration.yaml``
    beside the checkpoint (as the original expected), else the one stored in the checkpoint.
    Returns (DictConfig, where it came from); ``ConfigError`` when there is none or it does not
    fit the schema."""
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "configuration.yaml")
    if conf_path:
        data, source = load_yaml(conf_path), os.fspath(conf_path)
    elif os.path.isfile(beside):
        data, source = load_yaml(beside), beside
    elif state.get("conf") is not None:
        data, source = state["conf"], f"{checkpoint} (stored config)"
    else:
        raise ConfigError(f"{checkpoint}: no conf given, no {beside} and no stored config")
    return typed_run_config(data, source, needed=EVALUATION_SECTIONS), source


def trained_model(state, conf, source, checkpoint):
    """The model of ``conf`` (typed run config read from ``source``) with the weights of
    ``state`` (read from ``checkpoint``), in eval mode on the CPU."""
    try:
        model = build_model(conf.model, sr=conf.data.samplerate)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err
    load_model_state(model, state, source=os.fspath(checkpoint))
    return model.eval()


def load_trained_model(checkpoint, conf_path=None, device="cpu"):
    """(model in eval mode on ``device``, its config, config source) from a checkpoint of this
    project or of the original code."""
    state = load_checkpoint(checkpoint)
    conf, source = run_config(checkpoint, state, conf_path)
    return trained_model(state, conf, source, checkpoint).to(device), conf, source


def check_takes_audio(model, checkpoint):
    """A ``UsageError`` for a model of a feature dataset (``model.input: pcp``): embedding
    audio files needs a model that takes audio."""
    if model.input_kind != "audio":
        raise UsageError(
            f"{checkpoint}: this model takes precomputed pitch-class features (model.input="
            f"{model.input_kind}), not audio; embed audio with a model trained with "
            "model.input=audio, evaluate feature datasets with test.py"
        )
