"""Every key of the schema with a wrong value of each kind that applies (a wrong type, out of
its range, not one of its choices or grammar), through train.py's and test.py's entry points as
the command line calls them (``lib.cli.run``): one ``error:`` line naming the key, exit 2, and
nothing written."""

import dataclasses
import typing

import pytest
from omegaconf import OmegaConf

import train
from lib import cli, schema
from lib.config import load_run_config
from tests.test_evaluate import load_test_script

MODELS = ("clews", "dvinetp", "cqtnet", "bytecover2x", "bytecover3x", "coverhunterc", "move")
MODEL_CONFIGS = [f"config/small-{name}.yaml" for name in MODELS]
# keys whose values are not checked against a declaration: free text (names, paths) and the
# keys that other code checks with its own one-line errors (tested where that code is)
FREE = {"jobname", "conf", "checkpoint", "model.name", "path_audio", "path_meta", "out"}
FREE |= {"cache_dir", "qfilter", "cfilter", "sweep_cfilters", "sweep_metas"}
FREE |= {"fabric.precision", "precision"}


def leaf_fields(section, prefix=""):
    """[(dotted key, annotation, Valid or None)] of every key that holds a value."""
    out = []
    hints = typing.get_type_hints(section)
    for field in dataclasses.fields(section):
        annotation = hints[field.name]
        sub = schema.section_schema(annotation)
        if sub is not None:
            out += leaf_fields(sub, f"{prefix}{field.name}.")
        elif annotation is not typing.Any:
            out.append((prefix + field.name, annotation, field.metadata.get("valid")))
    return out


def base_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union:
        return base_type(args[0]) if len(args) == 1 else None  # a real Union: several kinds
    return annotation


def wrong_values(annotation, valid):
    """{kind: value text} of the wrong values that apply to a key."""
    kind = base_type(annotation)
    out = {}
    if kind in (int, float):
        out["type"] = "abc"
    if kind is int:
        out["type (fraction)"] = "2.5"
    if kind is bool:
        out["type"] = "maybe"
    if typing.get_origin(kind) is list:
        out["type"] = "abc"
    if valid is not None:
        if valid.choices:
            out["not a choice"] = "zzzz"
            out["empty"] = "''"
        if valid.grammar is not None:
            out["grammar"] = "zzzz_9_9_9_9"
        if valid.low is not None:
            low = valid.low if valid.low_open else valid.low - 1
            out["below"] = f"[{low:g}]" if typing.get_origin(kind) is list else f"{low:g}"
        if valid.high is not None:
            high = valid.high if valid.high_open else valid.high + 1
            out["above"] = f"{high:g}"
    return out


def cases(section, prefix=""):
    return [
        (key, kind, value)
        for key, annotation, valid in leaf_fields(section, prefix)
        if key not in FREE
        for kind, value in wrong_values(annotation, valid).items()
    ]


def training_cases():
    out = [("config/demo-clews.yaml", *case) for case in cases(schema.TrainConfig)]
    for path in MODEL_CONFIGS:
        model = OmegaConf.get_type(load_run_config(path).model)
        out += [(path, *case) for case in cases(model, "model.")]
    return out


TRAINING_CASES = training_cases()


def test_the_walk_covers_every_checked_key():
    keys = {key for _, key, _, _ in TRAINING_CASES}
    some = {"training.batchsize", "augmentations.reqcqt.lpf", "model.loss.redux.pos"}
    some |= {"model.mining.negative", "model.pooling", "ssl.views", "data.samplerate"}
    assert some <= keys
    assert len(TRAINING_CASES) > 150


def assert_refused(main, argv, key, folder, capsys):
    """``main(argv)`` through ``lib.cli.run``: exit 2, one ``error: <key>=...`` line on stderr,
    nothing written under ``folder``."""
    assert cli.run(main, argv) == 2, argv[-1]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"{key}=" in lines[0], lines[0]
    assert not list(folder.iterdir())


@pytest.mark.parametrize("conf, key, kind, value", TRAINING_CASES)
def test_every_training_key_refuses_a_wrong_value(conf, key, kind, value, tmp_path, capsys):
    argv = ["jobname=walk", f"conf={conf}", f"path.logs={tmp_path / 'logs'}"]
    argv += [f"path.cache={tmp_path / 'cache'}", f"{key}={value}"]
    assert_refused(train.main, argv, key, tmp_path, capsys)


TEST_CASES = cases(schema.TestArgs)
test_script = load_test_script()


@pytest.mark.parametrize("key, kind, value", TEST_CASES)
def test_every_test_py_argument_refuses_a_wrong_value(key, kind, value, tmp_path, capsys):
    argv = [f"checkpoint={tmp_path / 'x.ckpt'}", f"out={tmp_path / 'out'}"]
    argv += [f"cache_dir={tmp_path / 'cache'}", f"{key}={value}"]
    assert_refused(test_script.main, argv, key, tmp_path, capsys)
