"""Typed configuration: a YAML file plus ``key=value`` overrides, checked against the schema of
``lib.schema`` (the ``model`` section against its model's ``Model.Config``).

    python train.py jobname=shs-clews conf=config/shs-clews.yaml fabric.ngpus=2 training.batchsize=9

A value is read as the type its key declares: ``jobname=2024-01-01`` and
``qfilter="release_genres: Rock"`` are strings, ``training.optim.lr=2e-4`` a float,
``qslen=[10,20]`` a list. An unknown key, a value of the wrong type or a missing required key is
a ``ConfigError`` with one line naming the key, the expected type and the closest valid key. The
fork's top-level ``nnodes=`` / ``ngpus=`` are shortcuts for ``fabric.nnodes`` / ``fabric.ngpus``,
and ``fabric.devices`` is another name for ``fabric.ngpus``.
"""

import dataclasses
import difflib
import importlib.util
import os
import typing
from typing import Any, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lib import registry, schema
from lib.errors import UsageError
from lib.schema import ACCELERATORS, LOGGERS

SHORTCUTS = {"nnodes": "fabric.nnodes", "ngpus": "fabric.ngpus", "fabric.devices": "fabric.ngpus"}
NULLS = ("null", "~")
# what evaluating or embedding with a trained model reads of its config
# (test.py checks the paths it reads itself: path_audio= / path_meta= may give them)
EVALUATION_SECTIONS = ("data.samplerate", "data.nworkers")


class ConfigError(UsageError):
    """A config file or a command-line override is wrong; the message says what and where."""


###################################################################################################
# the keys of a schema


def schema_keys(section, prefix=""):
    """{dotted key: annotation} of every key of a schema dataclass, sections included."""
    keys = {}
    for name, annotation, _, _ in schema.fields(section):
        keys[prefix + name] = annotation
        sub = schema.section_schema(annotation)
        if sub is not None:
            keys.update(schema_keys(sub, f"{prefix}{name}."))
    return keys


def model_schema(name, source=None):
    """The ``Model.Config`` of ``model.name``; ConfigError for an unknown model."""
    try:
        return registry.model_class(name).Config
    except registry.UnknownModel as err:
        raise ConfigError(_where(source) + str(err)) from None


def run_keys(conf):
    """{dotted key: annotation} of a training config, with its model's keys."""
    keys = schema_keys(schema.TrainConfig)
    if OmegaConf.is_config(conf) and isinstance(conf.get("model"), DictConfig):
        keys.update(schema_keys(OmegaConf.get_type(conf.model), "model."))
    return keys


def _where(source):
    return f"{source}: " if source else ""


def _closest(key, known):
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _unknown(key, known, source=None):
    return ConfigError(f"{_where(source)}unknown config key '{key}'{_closest(key, known)}")


def _expected(key, known):
    """'int', 'list of float', ... of a key (list items ``r[0]`` count as their list)."""
    base = key.split("[")[0]
    annotation = known.get(base)
    return schema.type_name(annotation) if annotation is not None else "another type"


###################################################################################################
# typing a section


def typed(section, data, source=None, prefix="", needed=None):
    """``data`` (a dict or DictConfig) as a typed config of the schema dataclass ``section``;
    keys are reported with ``prefix`` (e.g. 'model.'). ``needed``: the dotted prefixes whose
    required keys must be there (default all). Raises ConfigError."""
    if OmegaConf.is_config(data) and OmegaConf.get_type(data) is section:
        return data
    if data is None:
        data = {}
    if OmegaConf.is_config(data):
        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source)}{prefix.rstrip('.') or 'config'}: expected a mapping")
    known = schema_keys(section, prefix)
    _check_known(data, known, prefix, source)
    try:
        conf = OmegaConf.merge(OmegaConf.structured(section), data)
    except OmegaConfBaseException as err:
        raise _type_error(err, known, prefix, source) from None
    missing = sorted(
        key
        for key in OmegaConf.missing_keys(conf)
        if needed is None or key.startswith(tuple(needed))
    )
    if missing:
        name = prefix + missing[0]
        raise ConfigError(
            f"{_where(source)}missing required config key '{name}' ({_expected(name, known)})"
        )
    return conf


def _check_known(data, known, prefix, source):
    for name, value in data.items():
        key = f"{prefix}{name}"
        if key not in known:
            raise _unknown(key, known, source)
        if isinstance(value, dict) and schema.section_schema(known[key]) is not None:
            _check_known(value, known, key + ".", source)


def _type_error(err, known, prefix, source):
    key = prefix + str(err.full_key or "")
    value = err.value
    return ConfigError(
        f"{_where(source)}{key}: expected {_expected(key, known)}, got {value!r}"
        if key in known or key.split("[")[0] in known
        else f"{_where(source)}{key}: {str(err).splitlines()[0]}"
    )


def check_values(conf, section, source=None, prefix=""):
    """Every value of the typed ``conf`` (of the schema dataclass ``section``) that its key's
    ``schema.Valid`` declaration refuses is a ConfigError: one line naming the key, the value
    and what is valid."""
    for item in dataclasses.fields(section):
        name = prefix + item.name
        value = conf.get(item.name) if OmegaConf.is_config(conf) else None
        if value is None or OmegaConf.is_missing(conf, item.name):
            continue
        if isinstance(value, DictConfig):
            inner = OmegaConf.get_type(value)
            if dataclasses.is_dataclass(inner):
                check_values(value, inner, source, name + ".")
            continue
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value)
        valid = item.metadata.get("valid")
        problem = valid.problem(value) if valid is not None else None
        if problem:
            raise ConfigError(f"{_where(source)}{name}={value!r} {problem}")


def check_dependencies(conf, source=None):
    """Keys that only mean something with another key say so when set without it."""
    defaults = schema.SslConfig()
    if conf.ssl.method == "none":
        for name in ("views", "view_offset", "hidden", "out"):
            if conf.ssl[name] != getattr(defaults, name):
                raise ConfigError(
                    f"{_where(source)}ssl.{name}={conf.ssl[name]!r} only means something with "
                    "ssl.method (now none: supervised training)"
                )
    if conf.training.freeze == "encoder":
        if conf.ssl.method != "none":
            raise ConfigError(
                f"{_where(source)}training.freeze=encoder only means something without "
                f"ssl.method (now {conf.ssl.method}): a pre-training trains the encoder"
            )
        if registry.model_class(conf.model.name).projection_module is None:
            raise ConfigError(
                f"{_where(source)}training.freeze=encoder: model.name={conf.model.name} "
                "declares no projection to train alone"
            )


def check_run_values(conf, source=None):
    check_values(conf, schema.TrainConfig, source)
    check_dependencies(conf, source)


def typed_run_config(data, source=None, needed=None):
    """A training config (file contents or a checkpoint's stored config) as a typed config:
    the sections of ``schema.TrainConfig`` and the model's ``Model.Config``. ``needed``: the
    sections whose required keys must be there (default all; a trained model's evaluation needs
    ``EVALUATION_SECTIONS``)."""
    if OmegaConf.is_config(data):
        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source)}expected a mapping of config keys at the top level")
    model = data.get("model")
    if not isinstance(model, dict):
        raise ConfigError(f"{_where(source)}no 'model' section")
    section = model_schema(model.get("name"), source)
    conf = typed(schema.TrainConfig, dict(data, model={}), source, needed=needed)
    conf.model = typed(section, model, source, prefix="model.")
    check_run_values(conf, source)
    return conf


###################################################################################################
# command-line overrides


def parse_overrides(args, shortcuts=None):
    """['a.b=1', 'c=x'] -> {'a.b': '1', 'c': 'x'}: the value texts, typed later by the keys'
    schema (``apply_overrides``); shortcuts resolved."""
    shortcuts = SHORTCUTS if shortcuts is None else shortcuts
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"argument {arg!r} is not of the form key=value")
        out[shortcuts.get(key, key)] = value
    return out


def value_for(annotation, text):
    """The value of an override text for a key of type ``annotation``: text stays text where
    a string is accepted (``2024-01-01``, ``a: b``), except ``null`` and, where a list is
    accepted, ``[...]``; other values are read as OmegaConf reads them."""
    allowed = _allowed_types(annotation)
    stripped = text.strip()
    if str in allowed:
        if stripped in NULLS and type(None) in allowed:
            return None
        if not (stripped.startswith("[") and list in allowed):
            return text.replace("${", "\\${")  # a value, not an interpolation to resolve
    value = OmegaConf.from_dotlist(["value=" + text])["value"]
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return _widen_numbers(annotation, value)


def _widen_numbers(annotation, value):
    """Integers where a Union accepts floats (OmegaConf converts plain float keys itself, not
    the members of a Union): ``qslen=20`` and ``qslen=[10,20]`` are seconds."""
    if typing.get_origin(annotation) is not Union:
        return value
    for member in typing.get_args(annotation):
        inner = typing.get_args(member)
        if member is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typing.get_origin(member) is list and isinstance(value, list) and inner == (float,):
            return [_widen_numbers(Union[float, None], item) for item in value]
    return value


def _allowed_types(annotation):
    if annotation is Any:
        return {Any}
    origin = typing.get_origin(annotation)
    if origin is Union:
        out = set()
        for arg in typing.get_args(annotation):
            out |= _allowed_types(arg)
        return out
    if origin is not None:
        return {origin}
    return {annotation}


def _open_sections(conf, key, keys):
    """Create the absent (null) optional sections above ``key``, e.g. ``augmentations.noise``
    for ``augmentations.noise.p=0.5``; their required keys must then be given too."""
    parts = key.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        section = schema.section_schema(keys.get(parent))
        if section is not None and OmegaConf.select(conf, parent) is None:
            OmegaConf.update(conf, parent, OmegaConf.structured(section), merge=False)


def apply_overrides(conf, overrides, keys):
    """Set ``overrides`` ({dotted key: value text}) in the typed ``conf`` whose keys and types
    are ``keys`` ({dotted key: annotation}), then check every value of ``conf`` against its
    declaration (``check_values``). Raises ConfigError naming the key."""
    for key in overrides:
        if key not in keys:
            raise _unknown(key, keys)
    for key, text in overrides.items():
        value = value_for(keys[key], text)
        if schema.section_schema(keys[key]) is not None and value is not None:
            raise ConfigError(f"{key} is a section: set its keys ({key}.KEY=VALUE)")
        try:
            _open_sections(conf, key, keys)
            OmegaConf.update(conf, key, value, merge=True)
        except OmegaConfBaseException:
            raise ConfigError(f"{key}={text}: expected {_expected(key, keys)}") from None
    section = OmegaConf.get_type(conf)
    if dataclasses.is_dataclass(section):  # a wrong value before the keys it leaves missing
        check_values(conf, section)
    missing = sorted(OmegaConf.missing_keys(conf))
    if missing:
        raise ConfigError(
            f"missing required config key '{missing[0]}' ({_expected(missing[0], keys)})"
        )


###################################################################################################


def load_yaml(path):
    """The mapping of a YAML file (untyped); ConfigError naming the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        conf = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a valid YAML config ({err})") from err
    if not isinstance(conf, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return conf


def load_run_config(path):
    """The typed training config of a YAML file."""
    return typed_run_config(load_yaml(path), source=os.fspath(path))


def load_config(args, required=("jobname", "conf")):
    """The run's typed config from command-line ``key=value`` arguments (``conf=`` names the
    YAML). Raises ConfigError with one clear line for every kind of mistake."""
    overrides = parse_overrides(args)
    missing = [k for k in required if overrides.get(k, "").strip() in ("", *NULLS)]
    if missing:
        example = "jobname=NAME conf=config/X.yaml [key=value ...]"
        raise ConfigError(f"missing required argument(s) {', '.join(missing)}; usage: {example}")
    conf = load_run_config(overrides["conf"])
    model_name = overrides.pop("model.name", None)
    if model_name is not None and model_name != conf.model.name:
        raise ConfigError(
            f"model.name={model_name}: another model needs its own config file (conf=...)"
        )
    apply_overrides(conf, overrides, run_keys(conf))  # the values: the file's and the overrides'
    check_dependencies(conf)
    check_logger(conf.logger)
    return conf


def parse_arguments(section, args, shortcuts=None):
    """A script's typed ``key=value`` arguments of the schema dataclass ``section``."""
    conf = OmegaConf.structured(section)
    apply_overrides(conf, parse_overrides(args, shortcuts or {}), schema_keys(section))
    return conf


def check_logger(value):
    """``logger`` is one of LOGGERS; wandb only where it is installed."""
    if value not in LOGGERS:
        raise ConfigError(f"logger={value!r} is not one of {', '.join(LOGGERS)}")
    if value == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "logger=wandb needs the wandb package, which is not installed (pip install wandb "
            "into .venv); logger=tensorboard (the default) and logger=csv need nothing more"
        )


def check_accelerator(value, name="accelerator"):
    if value not in ACCELERATORS:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(ACCELERATORS)}")

