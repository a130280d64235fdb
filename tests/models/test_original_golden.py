"""Faithfulness to the original code, proven against its own outputs (tests/golden/): every
original config builds exactly the original state dict (names, shapes, dtypes, order) and
parameter count, and with the golden weights each model gives the original's embeddings, loss
and logged terms."""

import filecmp
import pathlib

import pytest
import torch
from omegaconf import OmegaConf

from lib.checkpoint import load_model_state
from lib.model_base import build_model
from tests import golden_recipe as G

GOLDEN_SD = G.state_dicts()


def entries(model):
    return [
        [key, list(value.shape), str(value.dtype).removeprefix("torch.")]
        for key, value in model.state_dict().items()
    ]


@pytest.mark.parametrize("config", sorted(GOLDEN_SD))
def test_state_dict_is_the_originals(config):
    conf = OmegaConf.load(f"config/{config}.yaml")
    with torch.device("meta"):  # ByteCover3x's 3.9 GB of sub-centres are not allocated
        model = build_model(conf.model)
    want = GOLDEN_SD[config]
    got = entries(model)
    assert [e[0] for e in got] == [e[0] for e in want["state_dict"]]
    assert got == want["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == want["parameters"]


@pytest.fixture(scope="module")
def golden():
    return G.outputs()


def relative_difference(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", G.MODELS)
def test_outputs_are_the_originals(name, golden):
    """The golden weights loaded strictly by their original names; embeddings of the 40 s signal
    with windows every 5 s, then the loss and its logged terms on the 8 x 12 s batch."""
    want = golden["models"][name]
    conf = G.golden_conf(name)
    model = build_model(conf.model, sr=int(conf.data.samplerate))
    weights = G.recipe_state_dict(model.state_dict())
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        z = model(golden["signal"][None].float(), shingle_hop=5.0)[0]
    assert z.shape == want["z"].shape
    assert relative_difference(z, want["z"]) < 1e-4

    with torch.no_grad():
        torch.manual_seed(0)
        zz, extra = model.embed(model.prepare(golden["batch"].float()))
        loss, logs = model.loss(want["loss_labels"], want["loss_ids"], zz, extra=extra)
    assert loss.item() == pytest.approx(want["loss"], rel=1e-4, abs=1e-7)
    for key, value in want["loss_logs"].items():
        assert float(logs[key]) == pytest.approx(value, rel=1e-4, abs=1e-7), key

    # the same weights through the loader the scripts use, from a checkpoint's "model" dict
    fresh = build_model(conf.model, sr=int(conf.data.samplerate))
    load_model_state(fresh, {"model": weights})
    with torch.no_grad():
        again = fresh.eval()(golden["signal"][None].float(), shingle_hop=5.0)[0]
    assert torch.equal(again, z)


def test_golden_copy_is_the_reference():
    """The files in tests/golden are those of ../shared/reference/golden, where it exists."""
    shared = pathlib.Path(__file__).resolve().parents[3] / "shared" / "reference" / "golden"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not there")
    for name in ("original_state_dicts.json", "original_outputs.pt"):
        assert filecmp.cmp(shared / name, G.GOLDEN / name, shallow=False), name
