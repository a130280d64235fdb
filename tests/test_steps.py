"""lib/steps.py: the two kinds of training step behind one interface, on a small CLEWS and a
hand-made batch (the dataset's layout: cliques, then ids and audio of each version)."""

import pytest
import torch

from lib import ssl, steps
from lib.augmentations import Augment
from lib.config import ConfigError, load_config
from tests.test_ssl import SR, music, tiny_clews


def run_config(*overrides):
    return load_config(["jobname=x", "conf=config/demo-clews.yaml", *overrides])


def batch_of(audio, count):
    """A dataset batch of ``count`` works with two versions each (rows v * count + n)."""
    cliques = torch.arange(count)
    return [cliques, torch.arange(count), audio[:count], count + torch.arange(count), audio[count:]]


def test_the_config_picks_the_kind_of_step():
    net = tiny_clews()
    supervised = steps.make_step(run_config(), net, None)
    assert isinstance(supervised, steps.SupervisedStep) and supervised.module() is net
    byol = run_config("ssl.method=byol", "ssl.hidden=32", "ssl.out=16")
    pretext = steps.make_step(byol, net, None)
    assert isinstance(pretext, steps.PretextStep)
    assert isinstance(pretext.module(), ssl.EncoderWithPretext) and pretext.validation_module(
        "wrapped"
    ) is net  # validation runs the bare encoder


def test_a_frozen_encoder_trains_only_the_projection_and_keeps_its_statistics():
    net = tiny_clews()
    step = steps.SupervisedStep(net, None, freeze="encoder")
    trained = {id(p) for p in step.parameters()}
    projection = {id(p) for p in net.get_submodule(net.projection_module).parameters()}
    assert trained == projection and len(trained) < len(list(net.parameters()))
    step.train_mode(net)
    assert net.get_submodule(net.projection_module).training
    outside = [m for n, m in net.named_modules() if n and not n.startswith(net.projection_module)]
    assert len(outside) > 10 and not any(m.training for m in outside)
    assert len(steps.SupervisedStep(tiny_clews(), None).parameters()) == len(
        list(net.parameters())
    )


def test_a_supervised_step_is_the_models_loss_of_its_batch():
    net = tiny_clews()
    step = steps.SupervisedStep(net, None)  # no augmentation: the loss is reproducible
    batch = batch_of(music(3, 4, seed=1), 3)
    loss, logs = step.loss(net, batch, epoch=0)
    _, _, z, expected, _ = steps.supervised_batch(net, net, None, batch)
    assert torch.isfinite(loss) and "l_main" in logs
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert step.state() == {} and step.side_files({"model": {}}) == {}


def test_a_pretext_step_keeps_its_heads_apart_and_resumes_them():
    conf = run_config("ssl.method=byol", "ssl.hidden=32", "ssl.out=16")
    net = tiny_clews()
    step = steps.make_step(conf, net, Augment(conf.augmentations, sr=SR))
    step.begin(total_steps=10)
    assert step.pretext.total_steps == 10
    heads = step.pretext.head_parameters()
    assert len(step.parameters()) == len(list(net.parameters())) + len(heads)
    loss, logs = step.loss(step.module(), batch_of(music(4, 4, seed=2), 4), epoch=0)
    assert torch.isfinite(loss) and {"l_main", "s_std", "s_rank", "s_agree"} <= set(logs)
    state = step.state()
    assert set(state) == {"ssl"} and any(k.startswith("teacher.") for k in state["ssl"])
    assert set(step.side_files({"model": {"w": 1}})) == {"encoder.pt"}
    again = steps.make_step(conf, tiny_clews(), None)
    again.load_state(state, "run/checkpoint_last.ckpt")
    for key, value in again.pretext.state_dict().items():
        assert torch.equal(value, state["ssl"][key])
    with pytest.raises(ConfigError, match="run/x.ckpt: no ssl state to resume a pre-training"):
        again.load_state({"model": {}}, "run/x.ckpt")


def test_every_method_is_one_class_of_the_table():
    assert ssl.METHODS == tuple(ssl.PRETEXTS) and set(ssl.TEACHER_METHODS) == {"byol", "dino"}
    for name, cls in ssl.PRETEXTS.items():
        assert issubclass(cls, ssl.Pretext) and cls.name == name
