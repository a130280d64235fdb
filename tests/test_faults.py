"""Fault tests across the entry points, each run as the user would run it (a subprocess): the
exit status, one clear line naming the file and the problem, and nothing else lost.

Untrusted files: a checkpoint or metadata file carrying a pickle that would run a command is
refused by every script before anything executes; filter expressions and config values stay
data. Wrong usage: misspelt keys, wrong paths, a checkpoint of another model, an empty split."""

import os
import sys

import pytest
import torch

from lib.checkpoint import load_checkpoint
from lib.preproc import load_metadata, save_metadata
from tests.corpus import folder_corpus, run_script
from tests.test_inference import tiny_checkpoint

SR = 16000


class Hostile:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return folder_corpus(tmp_path_factory.mktemp("faults"), 4, 3, 8, seed=5, split="0.5,0.25,0.25")


@pytest.fixture(scope="module")
def checkpoint(corpus):
    """A tiny CLEWS checkpoint (config inside) whose paths point at the corpus."""
    data = {"samplerate": SR, "audiolen": 4, "n_per_class": 2, "nworkers": 0}
    paths = {"audio": str(corpus / "audio"), "meta": str(corpus / "meta.pt")}
    path, _ = tiny_checkpoint(corpus, data=data, path=paths)
    return path


def last_line(result):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def script(*args):
    return run_script([sys.executable, *map(str, args)])


###################################################################################################
# Untrusted files
###################################################################################################


@pytest.fixture()
def hostile_checkpoint(tmp_path, checkpoint):
    marker = tmp_path / "pwned"
    path = tmp_path / "run" / "evil.ckpt"
    path.parent.mkdir()
    state = load_checkpoint(checkpoint)
    torch.save({"model": state["model"], "conf": Hostile(marker), "epoch": 1}, path)
    return path, marker


@pytest.mark.parametrize(
    "entry", ["train", "test", "inference", "match-index", "match-mirex"], ids=str
)
def test_hostile_checkpoint_is_refused_by_every_script(entry, hostile_checkpoint, corpus, tmp_path):
    path, marker = hostile_checkpoint
    audio = corpus / "audio"
    one = sorted(audio.rglob("*.wav"))[0]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{one}\n")
    commands = {
        "train": [
            "train.py",
            "jobname=f",
            "conf=config/demo-clews.yaml",
            f"checkpoint={path}",
            f"path.logs={tmp_path / 'logs'}",
            f"path.audio={audio}",
            f"path.meta={corpus / 'meta.pt'}",
            "fabric.accelerator=cpu",
        ],
        "test": ["test.py", f"checkpoint={path}", "accelerator=cpu"],
        "inference": ["inference.py", f"--checkpoint={path}", f"--fn_in={one}", "--fn_out=x.pt"],
        "match-index": [
            "match.py",
            "index",
            f"--checkpoint={path}",
            f"--audio={audio}",
            f"--out={tmp_path / 'cat'}",
        ],
        "match-mirex": [
            "match.py",
            "mirex",
            f"--checkpoint={path}",
            f"--collection={listing}",
            f"--queries={listing}",
            f"--out={tmp_path / 'mirex.txt'}",
        ],
    }
    result = script(*commands[entry])
    assert result.returncode != 0
    assert not marker.exists(), "the pickle ran"
    assert "evil.ckpt" in result.stderr and "refused" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "mirex.txt").exists()


def test_hostile_metadata_is_refused_by_train_and_test(corpus, checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    meta = tmp_path / "evil-meta.pt"
    info, splits = load_metadata(corpus / "meta.pt")
    torch.save({"info": info, "split": splits, "about": Hostile(marker)}, meta)
    train = script(
        "train.py",
        "jobname=f",
        "conf=config/demo-clews.yaml",
        f"path.meta={meta}",
        f"path.audio={corpus / 'audio'}",
        f"path.logs={tmp_path / 'logs'}",
        "fabric.accelerator=cpu",
    )
    test = script("test.py", f"checkpoint={checkpoint}", f"path_meta={meta}", "accelerator=cpu")
    for result in (train, test):
        assert result.returncode == 1, result.stderr[-2000:]
        assert "evil-meta.pt" in last_line(result) and "refused" in last_line(result)
        assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_filters_and_config_values_stay_data(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    result = script("test.py", f"checkpoint={checkpoint}", f"qfilter=release_genres:{code}")
    assert result.returncode == 2 and "qfilter" in last_line(result)
    yaml = tmp_path / "evil.yaml"
    yaml.write_text(f"jobname: !!python/object/apply:os.system ['touch {marker}']\n")
    result = script("train.py", "jobname=f", f"conf={yaml}", f"path.logs={tmp_path}")
    assert result.returncode == 2 and "evil.yaml" in last_line(result)
    result = script(
        "train.py",
        "conf=config/demo-clews.yaml",
        f"jobname={code}",
        f"path.logs={tmp_path}",
        "path.meta=/nonexistent/meta.pt",
    )
    assert result.returncode != 0
    assert not marker.exists()


def test_inference_outputs_stay_in_the_output_folder(checkpoint, corpus, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    wav = sorted((corpus / "audio").rglob("*.wav"))[0].read_bytes()
    for name in ("..wav", "...wav", "a b.wav", "-x.wav", "sub/..wav"):
        (src / name).write_bytes(wav)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.wav").write_bytes(wav)
    os.symlink(outside, src / "link")  # a link out of the input folder
    out = tmp_path / "out"
    result = script(
        "inference.py", f"--checkpoint={checkpoint}", f"--path_in={src}", f"--path_out={out}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*.pt")]
    assert written and all(
        os.path.realpath(p).startswith(str(out.resolve()) + os.sep) for p in written
    )
    assert not list(outside.glob("*.pt"))


###################################################################################################
# Wrong usage
###################################################################################################


def test_misspelt_config_key_names_the_closest_one(tmp_path):
    result = script(
        "train.py",
        "jobname=f",
        "conf=config/demo-clews.yaml",
        "traning.batchsize=2",
        f"path.logs={tmp_path}",
    )
    assert result.returncode == 2
    assert "traning" in last_line(result) and "training" in last_line(result)
    assert "Traceback" not in result.stderr


def test_missing_config_and_wrong_dataset_paths(tmp_path):
    result = script("train.py", "jobname=f", "conf=config/nope.yaml")
    assert result.returncode == 2 and "config/nope.yaml" in last_line(result)
    result = script(
        "train.py",
        "jobname=f",
        "conf=config/demo-clews.yaml",
        f"path.meta={tmp_path / 'none.pt'}",
        f"path.logs={tmp_path}",
        "fabric.accelerator=cpu",
    )
    assert result.returncode == 1 and "none.pt" in last_line(result)
    assert "Traceback" not in result.stderr
    result = script(
        "data_preproc.py",
        "--dataset=folder",
        f"--path_audio={tmp_path / 'nothing'}",
        "--ext_in=wav",
        f"--fn_out={tmp_path / 'm.pt'}",
    )
    assert result.returncode != 0 and "nothing" in last_line(result)
    assert not (tmp_path / "m.pt").exists()


def test_checkpoint_of_another_model(checkpoint, tmp_path):
    result = script(
        "test.py", f"checkpoint={checkpoint}", "conf=config/demo-dvinetp.yaml", "accelerator=cpu"
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "checkpoint_best.ckpt" in last_line(result)
    assert "Traceback" not in result.stderr


def test_empty_split_is_one_clear_line(corpus, checkpoint, tmp_path):
    info, splits = load_metadata(corpus / "meta.pt")
    splits = dict(splits, test={})
    meta = tmp_path / "empty-test.pt"
    save_metadata(meta, info, splits)
    result = script("test.py", f"checkpoint={checkpoint}", f"path_meta={meta}", "accelerator=cpu")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "empty-test.pt" in last_line(result) and "test" in last_line(result)
    assert "Traceback" not in result.stderr
