"""Checkpoints written the way the original CLEWS code wrote them (Fabric state with a pickled
OmegaConf config, CQT kernels in the state dict, configuration.yaml beside it): inference.py
gives the embeddings of an independent functional forward pass (tests/reference_clews.py),
and test.py and train.py checkpoint= accept them."""

import json
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import inference
from lib import synth
from lib.audio import load_audio, write_audio
from models.clews import Model
from tests import reference_clews
from tests.corpus import folder_corpus, randomised, run_script
from tests.models.test_clews import tiny_conf

SR = 16000


def original_conf(corpus):
    conf = OmegaConf.load("config/demo-clews.yaml")
    conf.model = tiny_conf()
    conf.data.samplerate = SR
    conf.model.shingling.len, conf.model.shingling.hop = 4.0, 4.0
    conf.jobname = "orig"
    conf.path.audio, conf.path.meta = str(corpus / "audio"), str(corpus / "meta.pt")
    conf.data.path = conf.path  # the original copied the paths into data
    conf.training.optim.sched = "plateau_10"
    return conf


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(folder, checkpoint path, config, state dict) of a run saved in the original format."""
    root = tmp_path_factory.mktemp("released")
    corpus = folder_corpus(root / "corpus", 4, 3, 9, seed=2, split="0.5,0.5,0")
    conf = original_conf(corpus)
    model = Model(conf.model, sr=SR)
    sd = randomised(model, seed=1)
    model.load_state_dict(sd)
    optim = torch.optim.Adam(model.parameters(), lr=2e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optim, mode="max", factor=0.2, patience=9)
    run = root / "logs" / "orig"
    run.mkdir(parents=True)
    path = run / "checkpoint_best.ckpt"
    torch.save(  # what Fabric's save wrote: plain torch.save, DictConfig and numpy scalars inside
        {
            "model": sd,
            "optim": optim.state_dict(),
            "sched": sched.state_dict(),
            "conf": conf,
            "epoch": 3,
            "lr": 2e-4,
            "cost_best": np.float64(0.42),
        },
        path,
    )
    OmegaConf.save(conf, run / "configuration.yaml")  # copied there by hand in the original
    return root, path, conf, sd


def relative_difference(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_inference_matches_the_reference_forward(released, tmp_path):
    _, path, conf, sd = released
    rng = np.random.default_rng(3)
    piece = synth.compose(rng, 14.0)
    audio = synth.render(piece, synth.vary(piece, rng), SR, rng)[: 12 * SR]
    wav = tmp_path / "clip.wav"
    write_audio(str(wav), audio, SR)
    decoded = torch.from_numpy(load_audio(str(wav), SR))
    assert decoded.numel() == 12 * SR  # 3 windows of 4 s, no padding
    want = reference_clews.embed(decoded, sd, conf.model)
    out = tmp_path / "clip.pt"
    args = [f"--checkpoint={path}", f"--fn_in={wav}", "--device=cpu", "--hop_size=4"]
    assert inference.main([*args, f"--fn_out={out}"]) == 0
    got = torch.load(out, weights_only=True)
    assert got.shape == want.shape == (3, conf.model.zdim)
    assert relative_difference(got, want) < 1e-4
    # the config stored in the checkpoint is enough when configuration.yaml is not beside it
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes(path.read_bytes())
    out2 = tmp_path / "clip2.pt"
    assert inference.main([*args[1:], f"--checkpoint={alone}", f"--fn_out={out2}"]) == 0
    assert torch.equal(torch.load(out2, weights_only=True), got)


def test_reference_forward_is_sensitive_to_the_weights(released):
    """The check above can fail: another model's weights give other embeddings."""
    _, _, conf, sd = released
    audio = torch.randn(8 * SR) * 0.1
    other = randomised(Model(conf.model, sr=SR), seed=2)
    assert (
        relative_difference(
            reference_clews.embed(audio, other, conf.model),
            reference_clews.embed(audio, sd, conf.model),
        )
        > 0.1
    )


def test_test_py_and_train_py_accept_the_original_checkpoint(released):
    root, path, conf, _ = released
    out = root / "results"
    result = run_script(
        [
            sys.executable,
            "test.py",
            f"checkpoint={path}",
            "accelerator=cpu",
            "nworkers=0",
            "partition=valid",
            f"cache_dir={root / 'cache'}",
            f"out={out}",
            "qslen=-1",
            "cslen=-1",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["n_queries"] == 6 and 0 < run["MAP"]["mean"] <= 1
    # fine-tuning / resuming from it: epoch, optimiser and scheduler states are taken over
    result = run_script(
        [
            sys.executable,
            "train.py",
            "jobname=resumed",
            f"conf={path.parent / 'configuration.yaml'}",
            f"checkpoint={path}",
            f"path.logs={root / 'logs'}",
            "fabric.accelerator=cpu",
            "training.numepochs=4",
            "training.batchsize=2",
            "data.nworkers=0",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(root / "logs" / "resumed" / "checkpoint_last.ckpt", weights_only=True)
    assert state["epoch"] == 4  # one epoch after the original's 3
