import argparse
import errno
import os
import pickle

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from lib.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    optimizer_state,
    save_checkpoint,
)
from lib.files import WriteError, atomic_write
from lib.model_base import build_model
from models.clews import Model
from tests import golden_recipe
from tests.models.test_clews import tiny_conf


def _training_state(model):
    optim = torch.optim.Adam(model.parameters(), lr=2e-4)
    x = torch.randn(4, 20 * 16000) * 0.1
    z, _ = model.embed(model.prepare(x))
    model.loss(torch.tensor([0, 0, 1, 1]), torch.arange(4), z)[0].backward()
    optim.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optim, mode="max", factor=0.2, patience=9)
    sched.step(-float("inf"))
    return optim, sched


def _original_conf():
    """A config built the way the original train.py built it: YAML merged with CLI overrides,
    then sections copied around; it was pickled as an OmegaConf DictConfig."""
    conf = OmegaConf.merge(
        OmegaConf.load("config/shs-clews.yaml"),
        OmegaConf.from_cli(["jobname=shs-clews", "conf=config/shs-clews.yaml", "fabric.ngpus=2"]),
    )
    conf.model = tiny_conf()
    conf.data.path = conf.path
    conf.path.logs = "logs/shs-clews"
    return conf


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Model(tiny_conf())


def test_roundtrip_this_projects_format(tmp_path, tiny_model):
    optim, sched = _training_state(tiny_model)
    conf = _original_conf()
    path = tmp_path / "run" / "checkpoint_last.ckpt"
    state = {
        "model": tiny_model.state_dict(),
        "optim": optim.state_dict(),
        "sched": sched.state_dict(),
        "conf": conf,
        "epoch": 3,
        "lr": 2e-4,
        "cost_best": 0.25,
    }
    save_checkpoint(state, path)
    # stored as plain data: even a bare weights-only torch.load reads it without any allow-list
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw["conf"], dict) and raw["conf"]["fabric"]["ngpus"] == 2
    loaded = load_checkpoint(path)
    assert isinstance(loaded["conf"], DictConfig) and loaded["conf"].model.zdim == 24
    assert loaded["epoch"] == 3 and loaded["cost_best"] == 0.25
    fresh = Model(tiny_conf())
    load_model_state(fresh, loaded)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    new_optim = torch.optim.Adam(fresh.parameters(), lr=1.0)
    new_optim.load_state_dict(loaded["optim"])
    assert new_optim.param_groups[0]["lr"] == 2e-4
    assert [p.name for p in tmp_path.joinpath("run").iterdir()] == ["checkpoint_last.ckpt"]


def test_original_format_with_pickled_dictconfig_loads(tmp_path, tiny_model):
    optim, sched = _training_state(tiny_model)
    path = tmp_path / "checkpoint_best.ckpt"
    # written with plain torch.save, as Fabric did: DictConfig and a numpy float inside
    torch.save(
        {
            "model": tiny_model.state_dict(),
            "optim": optim.state_dict(),
            "sched": sched.state_dict(),
            "conf": _original_conf(),
            "epoch": 12,
            "lr": 4e-5,
            "cost_best": np.float64(0.731),
        },
        path,
    )
    loaded = load_checkpoint(path)
    assert loaded["conf"].jobname == "shs-clews" and loaded["conf"].data.path.meta.endswith(
        "shs.pt"
    )
    assert float(loaded["cost_best"]) == pytest.approx(0.731)
    fresh = Model(loaded["conf"].model)
    load_model_state(fresh, loaded)
    assert torch.equal(fresh.proj[1].weight, tiny_model.proj[1].weight)


def test_weights_with_wrapper_prefixes_and_scalar_shapes_load(tiny_model):
    weights = {}
    for key, value in tiny_model.state_dict().items():
        if key.endswith("gain"):
            value = value.reshape(())  # a scalar saved with shape ()
        weights["module." + key] = value
    fresh = Model(tiny_conf())
    load_model_state(fresh, {"model": weights})
    assert torch.equal(fresh.frontend[0].gain, tiny_model.frontend[0].gain)


def test_weights_of_another_model_are_refused_clearly(tiny_model):
    conf = tiny_conf()
    conf.zdim = 32
    other = Model(conf)
    with pytest.raises(CheckpointError, match=r"proj\.1\.weight: \(24, 64\) vs \(32, 64\)"):
        load_model_state(other, {"model": tiny_model.state_dict()})
    weights = dict(tiny_model.state_dict())
    weights.pop("pool.p")
    weights["head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="missing: pool.p.*unexpected: head.weight"):
        load_model_state(Model(tiny_conf()), weights)


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_pickle_is_refused_before_anything_runs(tmp_path, tiny_model):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"model": tiny_model.state_dict(), "conf": _Hostile(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load.*system"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same payload as a bare pickle file
    bare = tmp_path / "evil.pt"
    bare.write_bytes(pickle.dumps({"epoch": _Hostile(marker)}))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(bare)
    assert not marker.exists()


def test_unknown_classes_and_garbage_are_refused(tmp_path):
    path = tmp_path / "ns.ckpt"
    torch.save({"conf": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        load_checkpoint(path)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.ckpt")


def test_failed_save_keeps_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "checkpoint_last.ckpt"
    save_checkpoint({"epoch": 1, "model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(Exception) as failure:
        # a lambda cannot be pickled: torch.save fails after it started writing
        save_checkpoint({"epoch": 2, "model": {"w": torch.zeros(3)}, "bad": lambda: 0}, path)
    assert not isinstance(failure.value, WriteError)  # a bug, not the disk: raised as it is
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.ckpt"]
    assert load_checkpoint(path)["epoch"] == 1


class FullDisk:
    """A binary file handle that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self):
        self.handle.flush()


@pytest.mark.parametrize("writer", ["bytes", "torch.save"])
def test_full_disk_is_a_write_error_naming_the_file(tmp_path, writer):
    path = tmp_path / "checkpoint_last.ckpt"
    save_checkpoint({"epoch": 1, "model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    state = {"epoch": 2, "model": {"w": torch.zeros(1000)}}
    if writer == "bytes":
        write = lambda handle: FullDisk(handle, 100).write(b"x" * 1000)  # noqa: E731
    else:  # torch.save turns the OSError into a RuntimeError about zip positions
        write = lambda handle: torch.save(state, FullDisk(handle, 1000))  # noqa: E731
    with pytest.raises(WriteError) as failure:
        atomic_write(path, write)
    assert str(failure.value).startswith(f"{path}: could not be written (No space left on device)")
    assert "run the same command again" in str(failure.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.ckpt"]


def test_written_files_get_the_permissions_open_gives(tmp_path):
    with open(tmp_path / "plain", "w") as handle:
        handle.write("x")
    atomic_write(tmp_path / "atomic", lambda handle: handle.write(b"x"))
    save_checkpoint({"epoch": 1}, tmp_path / "c.ckpt")
    mode = (tmp_path / "plain").stat().st_mode & 0o777
    assert (tmp_path / "atomic").stat().st_mode & 0o777 == mode
    assert (tmp_path / "c.ckpt").stat().st_mode & 0o777 == mode


# --------------------------------------------------------------------------------------------------
# checkpoints of this project from before it took the original's module names
# --------------------------------------------------------------------------------------------------

LEGACY = torch.load("tests/legacy/models_before_original_names.pt", weights_only=True)


def legacy_weights(model, names):
    """The old-named state dict of tests/legacy: the golden recipe keyed by the old names; the
    entries the recipe keeps (scalars, counters, CQT kernels) as the model builds them."""
    built = model.state_dict()
    weights = {}
    for name, shape in names:
        current = built[model.legacy_key(name)]
        value = golden_recipe.recipe_value(name, torch.empty(shape, dtype=current.dtype))
        weights[name] = current.clone().reshape(shape) if value is None else value
    return weights


@pytest.mark.parametrize("name", golden_recipe.MODELS)
def test_checkpoints_with_the_earlier_names_load_and_embed_alike(name):
    entry = LEGACY["models"][name]
    model = build_model(golden_recipe.declared_only(entry["conf"]), sr=16000)
    old = legacy_weights(model, entry["names"])
    assert set(old) != set(model.state_dict())  # the names did change
    load_model_state(model, {"model": old})
    with torch.no_grad():
        z = model.eval()(LEGACY["signal"][None].float(), shingle_hop=5.0)[0]
    assert ((z - entry["z"]).norm() / entry["z"].norm()).item() < 1e-5


def test_optimizer_state_of_the_earlier_names_follows_its_parameters():
    """CoverHunter-C's parameters came in another order under the earlier names: each Adam state
    must reach the parameter it belongs to, not the one now at its old position."""
    entry = LEGACY["models"]["coverhunterc"]
    model = build_model(golden_recipe.declared_only(entry["conf"]), sr=16000)
    old_names = [n for n, _ in entry["names"]]
    state = {"model": legacy_weights(model, entry["names"]), "optim": entry["optim"]}
    load_model_state(model, state)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    optim.load_state_dict(optimizer_state(model, state))

    params = dict(model.named_parameters())
    old_param_order = [n for n in old_names if model.legacy_key(n) in params]
    assert [model.legacy_key(n) for n in old_param_order] != list(params)  # the order changed
    for old_index, old_name in enumerate(old_param_order):
        param = params[model.legacy_key(old_name)]
        if not param.requires_grad:
            continue
        got = optim.state[param]["exp_avg"]
        assert torch.equal(got, entry["optim"]["state"][old_index]["exp_avg"]), old_name
    optim.step()  # shapes fit
