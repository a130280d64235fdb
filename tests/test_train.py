"""train.py end to end on CPU: run folder, resume after kill -9, 2-process DDP, NaN stop, errors.

Each run trains a small CLEWS for 1-2 epochs on a generated corpus, as a real subprocess."""

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from lib import precision, training
from lib.checkpoint import load_checkpoint
from lib.model_base import build_model
from tests.corpus import ROOT, folder_corpus, run_script

SMALL = [
    "conf=config/demo-clews.yaml",
    "fabric.accelerator=cpu",
    "data.audiolen=10",
    "data.nworkers=1",
    "training.batchsize=4",
    "model.shingling.len=5",
    "model.shingling.hop=5",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return folder_corpus(tmp_path_factory.mktemp("train"), 10, 4, 14, seed=1, split="0.6,0.4,0")


def train_cmd(corpus, logs, job, *extra):
    paths = [
        f"path.audio={corpus / 'audio'}",
        f"path.meta={corpus / 'meta.pt'}",
        f"path.logs={logs}",
    ]
    return [sys.executable, "train.py", f"jobname={job}", *SMALL, *paths, *extra]


def run(cmd, env=None):
    return run_script(cmd, env)


def weights(path):
    return load_checkpoint(path)["model"]


def test_two_epochs_write_the_run_folder(corpus, tmp_path):
    result = run(
        train_cmd(corpus, tmp_path, "demo", "training.numepochs=2", "training.save_freq=1")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "demo"
    names = {p.name for p in folder.iterdir()}
    assert {"configuration.yaml", "checkpoint_last.ckpt", "checkpoint_best.ckpt"} <= names
    assert {"checkpoint_epoch0.ckpt", "checkpoint_epoch1.ckpt", "checkpoint_epoch2.ckpt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    state = load_checkpoint(folder / "checkpoint_last.ckpt")
    assert state["epoch"] == 2 and set(state) >= {
        "model",
        "optim",
        "sched",
        "conf",
        "lr",
        "cost_best",
    }
    assert 0 < state["cost_best"] <= 1  # best validation MAP
    # checkpoint_epoch0 holds the starting weights: those of a fresh model with the run's seed
    start = load_checkpoint(folder / "checkpoint_epoch0.ckpt")
    assert start["epoch"] == 0 and set(start) == set(state)
    training.seed_epoch(state["conf"].seed, -1, 0)
    fresh = build_model(state["conf"].model, sr=int(state["conf"].data.samplerate)).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in start["model"].items())
    assert not torch.equal(start["model"]["proj.1.weight"], state["model"]["proj.1.weight"])
    assert state["conf"].data.audiolen == 10
    assert "Epoch 2/2" in result.stdout and "m_MAP" in result.stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    tags = set(events.Tags()["scalars"])
    want = {"hpar/epoch", "hpar/lr", "valid/m_MAP", "valid/m_MR1", "valid/m_ARP", "valid/m_COMP"}
    want |= {
        f"{s}/{k}"
        for s in ("train", "valid")
        for k in ("l_main", "l_cent", "l_cont", "v_dpos", "v_dneg", "v_zmax", "v_zmean", "v_zstd")
    }
    assert want <= tags
    maps = {e.step: e.value for e in events.Scalars("valid/m_MAP")}
    assert sorted(maps) == [0, 1, 2] and all(np.isfinite(list(maps.values())))  # 0 = untrained


def test_killed_run_resumes_to_the_same_weights(corpus, tmp_path):
    straight = run(train_cmd(corpus, tmp_path, "straight", "training.numepochs=2"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    cmd = train_cmd(corpus, tmp_path, "killed", "training.numepochs=2")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "killed" / "checkpoint_last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # during epoch 2
    proc.wait()
    assert load_checkpoint(last)["epoch"] == 1
    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed after epoch 1" in resumed.stdout
    a, b = weights(tmp_path / "straight" / "checkpoint_last.ckpt"), weights(last)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed call's log starts when it does, not at its first epoch's end, so the time its
    # log spans (what benchmarks count as training time) holds that epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = sorted((tmp_path / "killed").glob("events.out.tfevents.*"), key=os.path.getmtime)
    assert len(logs) == 2
    events = EventAccumulator(str(logs[-1]), size_guidance={"scalars": 0})
    events.Reload()
    [resumed_mark] = events.Scalars("resumed_after_epoch")
    assert resumed_mark.step == 1 and resumed_mark.value == 1
    epoch_end = max(e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag))
    assert epoch_end > resumed_mark.wall_time


def test_two_process_ddp_on_cpu_partitions_the_training_set(corpus, tmp_path):
    items = tmp_path / "items"
    result = run(
        train_cmd(corpus, tmp_path, "ddp", "training.numepochs=2", "fabric.devices=2"),
        env={"CLEWS_LOG_ITEMS": str(items)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(tmp_path / "ddp" / "checkpoint_last.ckpt")["epoch"] == 2
    rank0 = (items / "items_rank0.txt").read_text().splitlines()
    rank1 = (items / "items_rank1.txt").read_text().splitlines()
    assert len(rank0) == len(rank1) == 2
    for epoch in range(2):
        a, b = set(map(int, rank0[epoch].split())), set(map(int, rank1[epoch].split()))
        assert a and b and not (a & b)  # disjoint shards of the same permutation
        assert len(a) == len(b) == 12  # 24 training versions, 2 ranks, batches of 4 -> 3 x 4 each
    assert rank0[0] != rank0[1]  # reshuffled every epoch


@pytest.mark.parametrize("poison", [np.nan, np.inf], ids=["nan", "inf"])
def test_nan_stops_with_error_and_keeps_the_last_good_checkpoint(poison, corpus, tmp_path):
    # train one good epoch on a copy of the corpus, then poison the training files
    import shutil

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    first = run(train_cmd(data, tmp_path, "nan", "training.numepochs=1"))
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "nan" / "checkpoint_last.ckpt"
    before = last.read_bytes()
    meta = torch.load(data / "meta.pt", weights_only=True)
    for clique, keys in meta["split"]["train"].items():
        for key in keys:
            path = data / "audio" / meta["info"][key]["filename"]
            x, sr = sf.read(path, dtype="float32")
            sf.write(path, np.full_like(x, poison), sr, subtype="FLOAT")
    best = tmp_path / "nan" / "checkpoint_best.ckpt"
    best_before = best.read_bytes()
    again = run(train_cmd(data, tmp_path, "nan", "training.numepochs=3"))
    assert again.returncode == 1
    assert "error: NaN or inf reached (loss is nan at batch 1)" in again.stderr
    assert last.read_bytes() == before and load_checkpoint(last)["epoch"] == 1
    assert best.read_bytes() == best_before and load_checkpoint(best)["epoch"] == 1


def test_usage_errors_are_one_line_and_nonzero(corpus, tmp_path):
    typo = run(train_cmd(corpus, tmp_path, "typo", "training.batchsze=2"))
    assert typo.returncode == 2
    assert "did you mean 'training.batchsize'" in typo.stderr
    missing = run(train_cmd(corpus, tmp_path, "missing", f"path.meta={tmp_path / 'nope.pt'}"))
    assert missing.returncode == 1 and "nope.pt: metadata file not found" in missing.stderr
    big = run(train_cmd(corpus, tmp_path, "big", "training.batchsize=64"))
    assert big.returncode == 1 and "lower training.batchsize" in big.stderr
    other = run(train_cmd(corpus, tmp_path, "straight2", "training.numepochs=1"))
    assert other.returncode == 0
    changed = run(train_cmd(corpus, tmp_path, "straight2", "training.numepochs=2", "model.zdim=32"))
    assert changed.returncode == 1 and "model.zdim: 64 -> 32" in changed.stderr
    logger = run(train_cmd(corpus, tmp_path, "logger", "logger=neptune"))
    assert logger.returncode == 2 and "logger='neptune' is not one of" in logger.stderr
    if importlib.util.find_spec("wandb") is None:
        wandb = run(train_cmd(corpus, tmp_path, "wandb", "logger=wandb"))
        assert wandb.returncode == 2 and "logger=wandb needs the wandb package" in wandb.stderr
        assert not (tmp_path / "wandb").exists()  # refused before the run folder was made


def test_csv_logger_writes_the_epoch_metrics(corpus, tmp_path):
    result = run(train_cmd(corpus, tmp_path, "csv", "logger=csv", "training.numepochs=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert "valid/m_MAP" in rows[0] and len(rows) >= 3  # header, epoch 0 and epoch 1
    assert not list((tmp_path / "csv").glob("events.out.tfevents*"))


def test_bf16_training_where_the_cpu_computes_it(corpus, tmp_path):
    cmd = train_cmd(corpus, tmp_path, "bf16", "fabric.precision=bf16-mixed", "training.numepochs=1")
    result = run(cmd)
    if not precision.cpu_has_native_bf16():
        assert result.returncode == 2 and "no native bf16" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "bf16" / "checkpoint_last.ckpt")
    assert state["epoch"] == 1 and math.isfinite(state["cost_best"])
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values())  # fp32 weights


def test_finetune_from_weights_only_and_min_lr_stop(corpus, tmp_path):
    base = run(train_cmd(corpus, tmp_path, "base", "training.numepochs=1"))
    assert base.returncode == 0, base.stderr[-3000:]
    assert "Epoch 0/1" in base.stdout and "(before training)" in base.stdout
    trained = weights(tmp_path / "base" / "checkpoint_last.ckpt")
    torch.save({"model": trained}, tmp_path / "weights.pt")
    # poly_1 over 4 epochs: lr 1e-3 -> 7.5e-4 -> 5e-4 < min_lr 6e-4: stops after epoch 2
    tuned = run(
        train_cmd(
            corpus,
            tmp_path,
            "tuned",
            "training.numepochs=4",
            f"checkpoint={tmp_path / 'weights.pt'}",
            "training.optim.sched=poly_1",
            "training.optim.min_lr=6e-4",
        )
    )
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert (
        "Fine-tuning from the weights in" in tuned.stdout
        and "Min lr reached. Stop." in tuned.stdout
    )
    state = load_checkpoint(tmp_path / "tuned" / "checkpoint_last.ckpt")
    assert state["epoch"] == 2 and state["lr"] == pytest.approx(5e-4)
    # epoch 0 of the fine-tune evaluates the given weights, not a fresh initialisation
    base_map = float(base.stdout.split("Epoch 1/1:")[1].split("m_MAP = ")[1].split(",")[0])
    tuned_map0 = float(tuned.stdout.split("Epoch 0/4:")[1].split("m_MAP = ")[1].split(",")[0])
    # (not bit-equal: printed with 3 decimals, and bpwr's tie-breaking noise differs per run)
    assert tuned_map0 == pytest.approx(base_map, abs=5e-3)
