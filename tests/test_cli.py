"""The command-line layer (lib/cli.py) and what every script does with it: --help, one error
line with exit status 2 for wrong arguments before any data is read, 1 for a failed run,
--debug for the traceback."""

import subprocess
import sys

import pytest

from lib import cli
from lib.config import ConfigError
from lib.errors import RunError, UsageError
from lib.metadata import DatasetError
from tests.corpus import ROOT
from tests.test_evaluate import load_test_script

SCRIPTS = ("train.py", "test.py", "inference.py", "match.py", "data_preproc.py", "demo.py")


def script(*args):
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def raising(error):
    def main(argv):
        raise error

    return main


@pytest.mark.parametrize(
    "error, status",
    [
        (ConfigError("training.batchsize=abc: expected int"), 2),
        (UsageError("bad"), 2),
        (DatasetError("meta.pt: no split 'test'"), 1),
        (RunError("disk full"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_expected_errors_are_one_line_and_a_status(capsys, error, status):
    assert cli.run(raising(error), []) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: " if status != 130 else "interrupted")


def test_other_errors_and_debug_keep_the_traceback(capsys):
    with pytest.raises(ZeroDivisionError):
        cli.run(raising(ZeroDivisionError()), [])
    with pytest.raises(ConfigError):
        cli.run(raising(ConfigError("x")), ["--debug"])
    seen = []
    assert cli.run(lambda argv: seen.append(argv) or 0, ["a=1", "--debug", "b=2"]) == 0
    assert seen == [["a=1", "b=2"]]  # --debug is the layer's, not the script's


def test_help_is_answered_before_main_runs(capsys):
    assert cli.run(raising(AssertionError()), ["-h"], help_text=lambda: "the help") == 0
    assert capsys.readouterr().out.strip() == "the help"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_help(name):
    result = script(name, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower() and result.stderr == ""


def test_train_and_test_help_list_every_key_with_type_and_default():
    train = script("train.py", "--help").stdout
    for line in (
        "training.batchsize  ",
        "model.cqt.pool.len",  # a baseline's own section
        "model.loss.redux.pos",  # CLEWS's
        "augmentations.specaugment.f_pc",
    ):
        assert line in train
    row = next(r for r in train.splitlines() if r.split()[:1] == ["training.optim.lr"])
    assert row.split()[1:3] == ["float", "required"]
    test = script("test.py", "--help").stdout
    row = next(r for r in test.splitlines() if r.split()[:1] == ["cshop"])
    assert row.split()[1:5] == ["float", "or", "null", "5.0"]
    row = next(r for r in test.splitlines() if r.split()[:1] == ["qshop"])
    assert row.split()[1:8] == ["float", "or", "list", "of", "float", "or", "null"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.batchsize=abc", "error: training.batchsize=abc: expected int"),
        ("training.batchsiz=3", "did you mean 'training.batchsize'"),
        ("model.zdim=big", "error: model.zdim=big: expected int"),
    ],
)
def test_train_refuses_wrong_overrides_before_reading_data(tmp_path, override, message):
    result = script(
        "train.py",
        "jobname=x",
        "conf=config/demo-clews.yaml",
        f"path.logs={tmp_path}",
        f"path.meta={tmp_path / 'absent.pt'}",  # would be exit 1 if data were read
        override,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr
    assert not (tmp_path / "x").exists()  # nothing was started


def test_a_date_like_jobname_is_a_name(tmp_path):
    result = script(
        "train.py",
        "jobname=2024-01-01",
        "conf=config/demo-clews.yaml",
        f"path.logs={tmp_path}",
        f"path.meta={tmp_path / 'absent.pt'}",
        "fabric.accelerator=cpu",
    )
    # the run starts (its folder is named after the job) and stops at the missing data
    assert result.returncode == 1, result.stderr[-2000:]
    assert (tmp_path / "2024-01-01" / "configuration.yaml").is_file()
    assert "absent.pt" in result.stderr.strip().splitlines()[-1]


def test_test_py_arguments_take_their_types():
    test_script = load_test_script()
    args = test_script.parse_args(
        ["checkpoint=x.ckpt", "qfilter=release_genres: Rock", "jobname=2024-01-01", "qslen=-1"]
    )
    assert args.qfilter == "release_genres: Rock" and args.jobname == "2024-01-01"
    assert args.qslen == -1.0
    with pytest.raises(ConfigError, match="^cshop=fast: expected float or null$"):
        test_script.parse_args(["checkpoint=x.ckpt", "cshop=fast"])
    with pytest.raises(ConfigError, match="^qshop=fast: expected float or list of float or null$"):
        test_script.parse_args(["checkpoint=x.ckpt", "qshop=fast"])
    assert test_script.parse_args(["checkpoint=x.ckpt", "qshop=[10,20]"]).qshop == [10.0, 20.0]
    with pytest.raises(ConfigError, match="unknown config key 'qslne'; did you mean 'qslen'"):
        test_script.parse_args(["checkpoint=x.ckpt", "qslne=3"])


def test_debug_shows_the_traceback(tmp_path):
    plain = script("test.py", f"checkpoint={tmp_path / 'none.ckpt'}")
    assert plain.returncode == 1 and plain.stderr.startswith("error: ")
    assert "Traceback" not in plain.stderr
    debug = script("test.py", f"checkpoint={tmp_path / 'none.ckpt'}", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "CheckpointError" in debug.stderr
