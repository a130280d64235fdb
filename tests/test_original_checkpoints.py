"""Checkpoints in the original code's format, one per model: its state-dict names (tests/golden),
the golden weights, a pickled OmegaConf config, optimiser and scheduler states, and
configuration.yaml beside it (the original's train.py wrote no config; users copied it there).
Each goes through inference.py (giving the original's own embeddings), test.py, match.py index
and train.py checkpoint= (resuming after the stored epoch), with its real config narrowed
only through keys the config has."""

import json
import sys

import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf

from lib.model_base import build_model
from lib.optim import get_optimizer, get_scheduler
from tests import golden_recipe as G
from tests.corpus import folder_corpus, run_scripts_together

SR = 16000
STORED_EPOCH = 1


@pytest.fixture(scope="module")
def golden():
    return G.outputs()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 works x 3 versions of 12 s: 2 works to train, 1 to validate, 1 to test."""
    return folder_corpus(tmp_path_factory.mktemp("corpus"), 4, 3, 12, seed=5, split="0.5,0.25,0.25")


def original_checkpoint(name, folder, corpus):
    """Write ``folder/checkpoint_best.ckpt`` as the original train.py did (Fabric's save of a
    dict, the config a pickled DictConfig) and configuration.yaml beside it. Returns its path."""
    conf = G.golden_conf(name)
    conf.jobname = f"original-{name}"
    conf.conf = f"config/dvi-{name}.yaml"  # the original kept the conf= argument in its config
    conf.path.audio, conf.path.meta = str(corpus / "audio"), str(corpus / "meta.pt")
    conf.data.path = conf.path  # the original copied the paths into the data section
    model = build_model(conf.model, sr=SR)
    weights = G.recipe_state_dict(model.state_dict())
    want = G.state_dicts()[f"dvi-{name}"]["state_dict"]
    assert list(weights) == [entry[0] for entry in want]  # the original's names, in its order
    model.load_state_dict(weights)
    optim = get_optimizer(conf.training.optim, model.parameters())
    gen = torch.Generator().manual_seed(0)
    for group in optim.param_groups:  # a state as after some training
        for param in group["params"]:
            if param.requires_grad:
                noise = 1e-4 * torch.randn(param.shape, generator=gen)
                optim.state[param] = {
                    "step": torch.tensor(10.0),
                    "exp_avg": noise,
                    "exp_avg_sq": noise.square(),
                }
    mode = str(conf.training.monitor.mode)
    sched, _ = get_scheduler(conf.training.optim, optim, int(conf.training.numepochs), mode=mode)
    folder.mkdir(parents=True)
    path = folder / "checkpoint_best.ckpt"
    state = {
        "model": weights,
        "optim": optim.state_dict(),
        "sched": sched.state_dict(),
        "conf": conf,
        "epoch": STORED_EPOCH,
        "lr": float(conf.training.optim.lr),
        "cost_best": np.float64(0.5),
    }
    torch.save(state, path)
    OmegaConf.save(conf, folder / "configuration.yaml")
    return path


@pytest.mark.parametrize("name", G.MODELS)
def test_original_checkpoint_through_every_script(name, golden, corpus, tmp_path):
    path = original_checkpoint(name, tmp_path / "logs" / f"original-{name}", corpus)
    wav, embedding = tmp_path / "signal.wav", tmp_path / "signal.pt"
    soundfile.write(wav, golden["signal"].float().numpy(), SR, subtype="FLOAT")  # exact samples
    results, catalogue = tmp_path / "results", tmp_path / "catalogue"
    py = sys.executable

    inference, evaluation = run_scripts_together(
        [py, "inference.py", f"--checkpoint={path}", f"--fn_in={wav}", f"--fn_out={embedding}"]
        + ["--device=cpu", "--hop_size=5"],
        [py, "test.py", f"checkpoint={path}", "accelerator=cpu", "nworkers=0"]
        + [f"cache_dir={tmp_path / 'cache'}", f"out={results}"],
    )
    # inference.py: the original's embeddings of the golden signal
    assert inference.returncode == 0, inference.stderr[-3000:]
    got, want = torch.load(embedding, weights_only=True), golden["models"][name]["z"]
    assert got.shape == want.shape
    assert ((got - want).norm() / want.norm()).item() < 1e-4
    # test.py with its default windows (the training length every 5 s)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    run = json.loads((results / "results.json").read_text())["runs"][0]
    assert run["n_queries"] == 3 and 0 < run["MAP"]["mean"] <= 1
    assert run["query"]["shop"] == 5.0

    index, training = run_scripts_together(
        [py, "match.py", "index", f"--checkpoint={path}", f"--audio={corpus / 'audio' / 'work000'}"]
        + [f"--out={catalogue}", "--device=cpu", "--nworkers=0"],
        [py, "train.py", f"jobname=resumed-{name}", f"checkpoint={path}"]
        + [f"conf={path.parent / 'configuration.yaml'}", f"path.logs={tmp_path / 'logs'}"]
        + ["fabric.accelerator=cpu", "data.nworkers=0", "data.audiolen=12", "limit_batches=1"]
        + ["training.batchsize=1", f"training.numepochs={STORED_EPOCH + 1}"],
    )
    # match.py index: a catalogue of one work's versions
    assert index.returncode == 0, index.stderr[-3000:]
    assert "3 tracks" in index.stdout, index.stdout[-2000:]
    # train.py checkpoint=: resumes the original run after its stored epoch
    assert training.returncode == 0, training.stderr[-3000:]
    assert f"Resumed after epoch {STORED_EPOCH}" in training.stdout
    resumed = torch.load(
        tmp_path / "logs" / f"resumed-{name}" / "checkpoint_last.ckpt", weights_only=True
    )
    assert resumed["epoch"] == STORED_EPOCH + 1
    original_names = [entry[0] for entry in G.state_dicts()[f"dvi-{name}"]["state_dict"]]
    assert list(resumed["model"]) == original_names  # a checkpoint the original code can load
