"""Experiment configuration: a YAML file plus ``key=value`` overrides from the command line.

    python train.py jobname=shs-clews conf=config/shs-clews.yaml fabric.ngpus=2 training.batchsize=9

Values are YAML-typed (``300`` int, ``1e-6`` float, ``null`` None). Any key of the YAML can be
overridden; a key that does not exist is an error naming the closest valid key. The fork's
top-level ``nnodes=`` / ``ngpus=`` are shortcuts for ``fabric.nnodes`` / ``fabric.ngpus``, and
``fabric.devices`` is another name for ``fabric.ngpus``.
"""

import difflib
import importlib.util
import os

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
LOGGERS = ("tensorboard", "csv", "wandb")  # training logs; the fork's configs said "wandb"
# keys every config has even when its YAML predates them (the original configs)
DEFAULTS = {
    "jobname": None,
    "conf": None,
    "checkpoint": None,
    "limit_batches": None,
    "limit_num": None,
    "logger": "tensorboard",
    "fabric": {"nnodes": 1, "ngpus": 1, "accelerator": "auto", "precision": "32"},
}
SHORTCUTS = {"nnodes": "fabric.nnodes", "ngpus": "fabric.ngpus", "fabric.devices": "fabric.ngpus"}
# sections where new keys may be added from the command line (e.g. an augmentation block)
OPEN_SECTIONS = ("augmentations.",)


class ConfigError(Exception):
    """A config file or a command-line override is wrong; the message says what and where."""


def parse_overrides(args):
    """['a.b=1', 'c=x'] -> {'a.b': 1, 'c': 'x'} with YAML-typed values; shortcuts resolved."""
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"argument {arg!r} is not of the form key=value")
        out[SHORTCUTS.get(key, key)] = _yaml_value(value)
    return out


def _yaml_value(text):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _looks_numeric(text):
        return float(text)
    return value


def _looks_numeric(text):
    """YAML 1.1 reads '2e-4' as a string; configs mean a number."""
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity")


def load_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        conf = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a valid YAML config ({err})") from err
    if not isinstance(conf, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return conf


def all_keys(conf, prefix=""):
    keys = []
    for key, value in conf.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, DictConfig):
            keys += all_keys(value, name + ".")
    return keys


def _check_known(key, known, open_sections=OPEN_SECTIONS):
    if key in known or any(key.startswith(s) for s in open_sections):
        return
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown config key '{key}'{hint}")


def load_config(args, required=("jobname", "conf")):
    """Build the run's config from command-line ``key=value`` arguments (``conf=`` names the
    YAML). Raises ConfigError with one clear line for every kind of mistake."""
    overrides = parse_overrides(args)
    missing = [k for k in required if overrides.get(k) in (None, "")]
    if missing:
        example = "jobname=NAME conf=config/X.yaml [key=value ...]"
        raise ConfigError(f"missing required argument(s) {', '.join(missing)}; usage: {example}")
    conf = OmegaConf.merge(OmegaConf.create(DEFAULTS), load_yaml(overrides["conf"]))
    apply_overrides(conf, overrides)
    check_accelerator(conf.fabric.accelerator, "fabric.accelerator")
    check_logger(conf.logger)
    return conf


def apply_overrides(conf, overrides, open_sections=OPEN_SECTIONS):
    """Set ``overrides`` ({dotted key: value}) in ``conf``; every key must exist in it (or lie
    in one of ``open_sections``), else ConfigError naming the closest valid key."""
    known = all_keys(conf)
    for key in overrides:
        _check_known(key, known, open_sections)
    for key, value in overrides.items():
        OmegaConf.update(conf, key, value, merge=True, force_add=True)


def check_logger(value):
    """``logger`` is one of LOGGERS; wandb only where it is installed."""
    if str(value) not in LOGGERS:
        raise ConfigError(f"logger={str(value)!r} is not one of {', '.join(LOGGERS)}")
    if str(value) == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "logger=wandb needs the wandb package, which is not installed (pip install wandb "
            "into .venv); logger=tensorboard (the default) and logger=csv need nothing more"
        )


def check_accelerator(value, name="accelerator"):
    if str(value) not in ACCELERATORS:
        raise ConfigError(f"{name}={str(value)!r} is not one of {', '.join(ACCELERATORS)}")
