"""MOVE and the tutorial's variant (models/move.py): the reference's parameter counts and state
names, transposition invariance, the pitch-class front end from audio, the poolings, short
inputs, the triplet loss by hand, and config/demo-move.yaml through train.py and test.py."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from models import move
from tests.corpus import folder_corpus, run_script

SR = 16000
BASE = {  # pitch classes at CREMA's rate after MOVE's down-sampling: 4096 / 44100 s
    "name": "move",
    "shingling": {"len": 170.0, "hop": 170.0},
    "cqt": {
        "hoplen": 4096 / 44100,
        "noctaves": 7,
        "nbinsoct": 12,
        "fscale": 1.0,
        "pool": {"len": 1, "hop": 1},
    },
}


def build(seed=0, device=None, **over):
    torch.manual_seed(seed)
    conf = OmegaConf.create({**BASE, **over})
    if device is None:
        return move.Model(conf, sr=SR)
    with torch.device(device):
        return move.Model(conf, sr=SR)


@pytest.mark.parametrize(
    "over, count",
    [
        ({}, 6_288_902),  # MOVE, emb 16000: the released model
        ({"emb_size": 4000}, 3_216_902),  # the smaller release
        ({"emb_size": 256}, 2_258_438),
        ({"pooling": "mean", "final_activation": "none"}, 5_976_966),  # 256-channel conv5, bias
        ({"variant": "tutorial", "emb_size": 32}, 1_869_094),  # the tutorial (text: 1,869,093)
    ],
)
def test_parameter_counts_are_the_references(over, count):
    model = build(device="meta", **over)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize(
    "path, count, variant",
    [
        ("config/datacos-move.yaml", 6_288_902, "move"),
        ("config/cover1000-move.yaml", 1_869_094, "tutorial"),
    ],
)
def test_feature_configs_are_moves_recipe(path, count, variant):
    from lib.config import load_run_config

    conf = load_run_config(path)
    with torch.device("meta"):
        model = move.Model(conf.model, sr=conf.data.samplerate)
    assert sum(p.numel() for p in model.parameters()) == count and conf.model.variant == variant
    assert model.input_kind == "pcp" and model.sr == pytest.approx(44100 / 4096)
    assert int(model.sr * conf.model.shingling.len) == 1800  # MOVE's patch, in frames
    assert conf.training.optim.name == "sgd" and conf.training.optim.lr == 0.1
    assert conf.training.optim.sched == "step_0.2_80_100" and conf.training.numepochs == 120
    assert conf.training.batchsize * conf.data.n_per_class == 64
    assert conf.model.margin == 1.0 and conf.model.mining.negative == "hard"


def test_state_names_are_moves():
    names = [k for k in build(device="meta", emb_size=64).state_dict() if not k.startswith("cqt")]
    want = ["autopool_p"] + [f"conv{i}.{p}" for i in range(1, 6) for p in ("weight", "bias")]
    want += [f"prelu{i}.weight" for i in range(1, 6)]
    want += ["lin1.weight", "lin_bn.running_mean", "lin_bn.running_var"]
    want += ["lin_bn.num_batches_tracked"]
    assert names == want
    model = build(emb_size=64)
    assert model.prelu1.weight.item() == pytest.approx(0.01)  # MOVE's PReLU init
    assert build(variant="tutorial", emb_size=32).prelu1.weight.item() == pytest.approx(0.25)


@pytest.mark.parametrize("variant", ["move", "tutorial"])
def test_a_circular_shift_of_the_pitch_classes_leaves_the_embedding(variant):
    model = build(variant=variant, emb_size=32).eval()
    x = torch.rand(2, 1, 12, 400)
    with torch.no_grad():
        z = model.embed(x)[0]
        for k in (1, 5, 11):
            shifted = model.embed(torch.roll(x, k, dims=2))[0]
            assert torch.allclose(shifted, z, atol=1e-5 * z.abs().max()), k
    # MOVE-NT has no key pooling: a transposition changes its embedding
    plain = build(emb_size=32, transposition_invariant=False).eval()
    with torch.no_grad():
        z = plain.embed(x)[0]
        assert not torch.allclose(plain.embed(torch.roll(x, 5, dims=2))[0], z, atol=1e-3)


def test_pitch_classes_from_audio():
    # a 440 Hz tone: pitch class A (9, the CQT starting at C1), about 10.77 frames per second
    model = build(emb_size=32, shingling={"len": 40.0, "hop": 40.0}).eval()
    t = torch.arange(40 * SR) / SR
    audio = (0.3 * torch.sin(2 * math.pi * 440 * t))[None]
    with torch.no_grad():
        h = model.prepare(audio, shingle_len=40, shingle_hop=40)
    assert h.shape[:3] == (1, 1, 12) and abs(h.shape[3] - 40 * 44100 / 4096) <= 1
    profile = h[0, 0, :, 5:-5].mean(-1)
    assert int(profile.argmax()) == 9 and profile[9] == pytest.approx(1.0)
    assert float(profile.sort().values[-2]) < 0.5  # the CQT's leakage into the neighbours
    # 24 bins per octave fold to the same classes
    cqt = torch.zeros(1, 48, 3)
    cqt[0, 2 * 7 + 1, :] = 2.0  # octave 0, the upper bin of semitone 7
    cqt[0, 24 + 2 * 7, :] = 1.0  # octave 1, semitone 7
    cqt[0, 0, :] = 1.0  # semitone 0
    pcp = move.pitch_classes(cqt, 24)
    # energies: class 7 has 2^2 + 1^2 = 5, class 0 has 1; divided by the largest
    assert pcp.shape == (1, 12, 3)
    assert torch.allclose(pcp[0, :, 0], torch.eye(12)[7] + 0.2 * torch.eye(12)[0])


def test_poolings():
    x = torch.randn(3, 4, 50)
    assert torch.allclose(move.autopool(x, torch.zeros(1)), x.mean(-1))
    assert torch.allclose(move.autopool(x, torch.full((1,), 1e4)), x.amax(-1), atol=1e-4)
    for pooling in move.POOLINGS:
        model = build(emb_size=16, pooling=pooling).eval()
        with torch.no_grad():
            z, _ = model.embed(torch.rand(2, 3, 12, 330))
        assert z.shape == (2, 3, 16) and torch.isfinite(z).all()


def test_short_inputs_are_completed_to_the_receptive_field():
    model = build(emb_size=16).eval()
    assert model.receptive_field == 320  # 179 + 4 + 80 + 4 + 52 + 1 frames
    x = torch.rand(1, 1, 12, 100)
    with torch.no_grad():
        z = model.embed(x)[0]
        padded = model.embed(torch.nn.functional.pad(x, (0, 220)))[0]
    assert torch.equal(z, padded)
    assert build(variant="tutorial", emb_size=16).receptive_field == 196
    with pytest.raises(ValueError, match="12 pitch classes"):
        model.embed(torch.rand(1, 1, 84, 400))


def test_triplet_loss_by_hand_and_it_trains():
    model = build(emb_size=4)
    z = torch.tensor([[0.0, 0, 0, 0], [2, 0, 0, 0], [0, 2, 0, 0], [0, 2, 2, 0]])[:, None]
    labels, ids = torch.tensor([0, 0, 1, 1]), torch.arange(4)
    # squared distance / 4: d(0,1) = 1, d(0,2) = 1, d(0,3) = 2, d(1,2) = 2, d(1,3) = 3,
    # d(2,3) = 1. Batch-hard: anchor 0: p 1, n min(1, 2) = 1 -> relu(1 - 1 + 1) = 1; anchor 1:
    # p 1, n 2 -> 0; anchor 2: p 1, n 1 -> 1; anchor 3: p 1, n 2 -> 0; mean 0.5
    loss, logs = model.loss(labels, ids, z)
    assert loss.item() == pytest.approx(0.5) and logs["v_dpos"].item() == pytest.approx(1.0)
    # SGD steps at MOVE's learning rate lower it on 4 works x 2 random pitch sequences (noisily:
    # BatchNorm statistics of 8 items)
    model = build(variant="tutorial", emb_size=32)
    rng = np.random.default_rng(0)
    works = torch.tensor(rng.random((4, 12, 200)), dtype=torch.float32)
    x = torch.cat([works, works.roll(3, dims=1) * 0.8 + 0.1 * torch.rand(4, 12, 200)])[:, None]
    labels, ids = torch.arange(4).repeat(2), torch.arange(8)
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for _ in range(15):
        loss, _ = model.loss(labels, ids, model.embed(x)[0])
        seen.append(loss.item())
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert np.mean(seen[-5:]) < 0.8 * seen[0], seen


def test_demo_config_trains_an_epoch_on_cpu_and_evaluates_with_test_py(tmp_path):
    # config/demo-move.yaml as it is (8 kHz audio -> pitch classes), one epoch, whole tracks
    corpus = folder_corpus(tmp_path / "corpus", 6, 3, 22, seed=5, split="0.5,0.25,0.25")
    paths = [f"path.audio={corpus / 'audio'}", f"path.meta={corpus / 'meta.pt'}"]
    train = [sys.executable, "train.py", "jobname=move", "conf=config/demo-move.yaml"]
    train += ["fabric.accelerator=cpu", "training.numepochs=1", "training.batchsize=2"]
    train += ["data.nworkers=0", f"path.logs={tmp_path}", *paths]
    result = run_script(train)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "move" / "checkpoint_last.ckpt"
    test = [sys.executable, "test.py", f"checkpoint={ckpt}", "accelerator=cpu", "nworkers=0"]
    test += [f"cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'out'}", "qslen=-1", "cslen=-1"]
    result = run_script(test)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert run["redux"] == "min" and run["n_queries"] == 6 and 0 < run["MAP"]["mean"] <= 1
