"""Self-supervised pre-training pieces (lib/ssl.py, the dataset's views): views built from one
track without labels, and every method lowering its loss over a few steps of the demo's CLEWS
on a tiny synthetic corpus."""

import csv
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import data_preproc
from lib import ssl
from lib.audio import write_audio
from lib.dataset import Dataset
from lib.model_base import build_model
from lib.steps import stack_versions
from tests.corpus import folder_corpus, run_script

SR = 8000
RAMP = 0.02  # amplitude per second: a sample's value tells its time in the file


@pytest.fixture(scope="module")
def ramps(tmp_path_factory):
    """2 works x 2 versions of 30 s."""
    root = tmp_path_factory.mktemp("ramps")
    for w, versions in enumerate([2, 2]):
        for v in range(versions):
            x = (np.arange(30 * SR) / SR * RAMP).astype(np.float32)
            write_audio(root / "audio" / f"w{w}" / f"v{v}.wav", x, SR)
    args = ["--dataset=folder", f"--path_audio={root / 'audio'}", "--ext_in=wav"]
    args += [f"--fn_out={root / 'meta.pt'}", "--split=1,0,0", "--njobs=1", "--min_duration=1"]
    assert data_preproc.main(args) == 0
    return root


def data_conf(root):
    return OmegaConf.create(
        {
            "samplerate": SR,
            "audiolen": 4,
            "maxlen": None,
            "pad_mode": "repeat",
            "n_per_class": 4,
            "p_samesong": 0,
            "path": {"audio": str(root / "audio"), "meta": str(root / "meta.pt")},
        }
    )


def seconds_at(x):
    return float(x[0]) / RAMP


def test_same_passage_views_are_two_cuts_of_one_excerpt(ramps):
    torch.manual_seed(0)
    dset = Dataset(data_conf(ramps), "train", augment=True, views="same-passage", view_offset=2)
    assert len(dset) == 4  # one item per track
    gaps = []
    for i in range(len(dset)):
        song, id1, v1, id2, v2 = dset[i]
        assert (id1, id2) == (2 * song, 2 * song + 1)
        assert v1.shape == v2.shape == (4 * SR,)
        # each view is contiguous audio of the same track, started <= 2 s from the other
        for v in (v1, v2):
            assert float(v[-1] - v[0]) == pytest.approx(RAMP * (4 * SR - 1) / SR, abs=1e-4)
        gaps.append(abs(seconds_at(v1) - seconds_at(v2)))
    assert max(gaps) <= 2 + 1e-3 and max(gaps) > 0


def test_different_time_views_and_the_batch_layout(ramps):
    torch.manual_seed(1)
    dset = Dataset(data_conf(ramps), "train", augment=True, views="different-time")
    song, _, v1, _, v2 = dset[0]
    assert abs(seconds_at(v1) - seconds_at(v2)) > 0.1
    loader = torch.utils.data.DataLoader(dset, batch_size=4)
    tracks, items, audio = stack_versions(next(iter(loader)))
    # view-major: rows 0-3 the first views, rows 4-7 the second views of the same tracks
    assert torch.equal(tracks[:4], tracks[4:]) and torch.equal(items[4:], items[:4] + 1)
    assert audio.shape == (8, 4 * SR)
    with pytest.raises(Exception, match="ssl.views"):
        Dataset(data_conf(ramps), "train", views="same-track")


def tiny_clews():
    conf = OmegaConf.load("config/demo-clews.yaml").model
    conf.shingling.len, conf.shingling.hop = 4.0, 4.0
    torch.manual_seed(0)
    return build_model(conf, sr=SR)


def music(count, seconds, seed):
    """``count`` different harmonic sequences (one track each), two views of each (the second a
    quarter-second later and a little noisier)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int((seconds + 0.25) * SR)) / SR
    tracks = []
    for _ in range(count):
        notes = rng.integers(40, 80, size=8)
        f = 440 * 2 ** ((notes[(t * 2).astype(int) % 8] - 69) / 12)
        tracks.append(np.sin(2 * np.pi * np.cumsum(f) / SR) * 0.5)
    n = int(seconds * SR)
    first = [x[:n] for x in tracks]
    second = [x[SR // 4 : SR // 4 + n] + 0.05 * rng.standard_normal(n) for x in tracks]
    return torch.tensor(np.array(first + second), dtype=torch.float32)


@pytest.mark.parametrize("method", ssl.METHODS)
def test_every_method_lowers_its_loss_on_a_fixed_batch(method):
    encoder = tiny_clews()
    audio = music(8, 4, seed=2)
    with torch.inference_mode():
        h = encoder.prepare(audio)
    h = h.clone()
    pretext = ssl.make_pretext(method, encoder, total_steps=40, hidden=128, out=64)
    params = list(encoder.parameters()) + pretext.head_parameters()
    optim = torch.optim.Adam(params, lr=1e-3)
    encoder.train(), pretext.train()
    seen = []
    for step in range(25):
        loss, logs = pretext.loss(encoder, encoder, h, nviews=2, epoch=0)
        optim.zero_grad()
        loss.backward()
        optim.step()
        pretext.after_step(encoder, step)
        seen.append(loss.item())
    assert np.isfinite(seen).all()
    assert np.mean(seen[-5:]) < 0.9 * np.mean(seen[:3]), seen
    assert {"l_main", "s_std", "s_rank", "s_agree"} <= set(logs)
    if method == "dino":
        assert {"s_tentropy", "s_centre"} <= set(logs) and logs["s_centre"] > 0
    names = [n for n, _ in pretext.named_parameters()]
    # the teacher is moved by the EMA only, never by the optimiser
    assert not any(n.startswith("teacher.") for n, _ in zip(names, pretext.head_parameters()))
    if method in ssl.TEACHER_METHODS:
        teacher = pretext.teacher["encoder"].state_dict()
        moved = [k for k, v in encoder.state_dict().items() if not torch.equal(v, teacher[k])]
        assert moved  # a copy that trails the student


def test_heads_stay_out_of_the_encoders_state_and_unknown_methods_are_refused():
    encoder = tiny_clews()
    before = set(encoder.state_dict())
    pretext = ssl.make_pretext("byol", encoder, total_steps=10, hidden=32, out=16)
    assert set(encoder.state_dict()) == before
    assert {k.split(".")[0] for k in pretext.state_dict()} == {"projector", "predictor", "teacher"}
    assert ssl.make_pretext("clews", encoder, total_steps=10).head_parameters() == []
    with pytest.raises(ValueError, match="ssl.method"):
        ssl.make_pretext("simsiam", encoder, total_steps=10)


# --- train.py: pre-training, resuming it, fine-tuning from its encoder ---------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return folder_corpus(tmp_path_factory.mktemp("ssl"), 8, 2, 8, seed=4, split="0.5,0.5,0")


def train_cmd(corpus, logs, job, *extra):
    cmd = [sys.executable, "train.py", f"jobname={job}", "conf=config/demo-clews.yaml"]
    cmd += ["fabric.accelerator=cpu", "data.nworkers=0", "data.audiolen=4", "logger=csv"]
    cmd += ["model.shingling.len=4", "model.shingling.hop=4", "training.batchsize=2"]
    cmd += ["training.numepochs=1", "training.save_freq=null", f"path.logs={logs}"]
    cmd += [f"path.audio={corpus / 'audio'}", f"path.meta={corpus / 'meta.pt'}"]
    return cmd + list(extra)


def epoch_rows(folder):
    with open(folder / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", ssl.METHODS)
def test_train_py_pretrains_an_epoch_with_every_method(corpus, tmp_path, method):
    extra = [f"ssl.method={method}", "ssl.hidden=64", "ssl.out=32"]
    result = run_script(train_cmd(corpus, tmp_path, method, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / method
    encoder = torch.load(run / "encoder.pt", weights_only=True)
    last = torch.load(run / "checkpoint_last.ckpt", weights_only=False)
    assert set(encoder) == {"model"} and set(encoder["model"]) == set(last["model"])
    assert not any(k.startswith(("projector", "teacher")) for k in encoder["model"])
    heads = {k.split(".")[0] for k in last["ssl"]}
    assert heads == ({"projector"} if method in ("contrastive", "barlow", "vicreg") else
                     {"clews": set(), "byol": {"projector", "predictor", "teacher"},
                      "dino": {"projector", "dino", "teacher"}}[method])
    trained = [r for r in epoch_rows(run) if r.get("train/l_main")]
    assert len(trained) == 1 and np.isfinite(float(trained[0]["train/l_main"]))
    assert float(trained[0]["train/s_std"]) > 0 and float(trained[0]["train/s_rank"]) >= 1
    assert -1 <= float(trained[0]["train/s_agree"]) <= 1
    if method == "dino":
        assert float(trained[0]["train/s_centre"]) > 0
        assert 0 <= float(trained[0]["train/s_tentropy"]) <= np.log(4096)


def test_pretraining_resumes_with_its_heads_and_a_fine_tune_starts_from_the_encoder(
    corpus, tmp_path
):
    pre = ["ssl.method=byol", "ssl.hidden=64", "ssl.out=32"]
    assert run_script(train_cmd(corpus, tmp_path, "pre", *pre)).returncode == 0
    first = torch.load(tmp_path / "pre" / "checkpoint_last.ckpt", weights_only=False)
    again = run_script(train_cmd(corpus, tmp_path, "pre", *pre, "training.numepochs=2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resumed after epoch 1" in again.stdout
    second = torch.load(tmp_path / "pre" / "checkpoint_last.ckpt", weights_only=False)
    assert second["epoch"] == 2
    assert not torch.equal(first["ssl"]["predictor.0.weight"], second["ssl"]["predictor.0.weight"])

    # a linear probe on a fraction of the labels: only the projection moves
    start = tmp_path / "pre" / "encoder.pt"
    probe = ["training.freeze=encoder", "data.label_fraction=0.5", f"checkpoint={start}"]
    result = run_script(train_cmd(corpus, tmp_path, "probe", *probe))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Fine-tuning from the weights in" in result.stdout
    before = torch.load(start, weights_only=True)["model"]
    after = torch.load(tmp_path / "probe" / "checkpoint_last.ckpt", weights_only=False)["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("proj.") for k in changed)  # BN statistics included

    full = run_script(train_cmd(corpus, tmp_path, "full", f"checkpoint={start}"))
    assert full.returncode == 0, full.stderr[-3000:]
    after = torch.load(tmp_path / "full" / "checkpoint_last.ckpt", weights_only=False)["model"]
    assert not torch.equal(before["frontend.1.weight"], after["frontend.1.weight"])

    bad = run_script(train_cmd(corpus, tmp_path, "bad", "ssl.method=simclr"))
    assert bad.returncode == 2 and "ssl.method='simclr'" in bad.stderr
    both = ["ssl.method=byol", "training.freeze=encoder"]
    both = run_script(train_cmd(corpus, tmp_path, "both", *both))
    assert both.returncode == 2 and "training.freeze=encoder only means something without "\
        "ssl.method (now byol)" in both.stderr
    assert not (tmp_path / "both").exists()  # refused before the run folder


@pytest.mark.parametrize("method", ["contrastive", "dino"])
def test_two_process_ddp_pretraining_on_cpu(corpus, tmp_path, method):
    extra = [f"ssl.method={method}", "ssl.hidden=64", "ssl.out=32", "fabric.devices=2"]
    result = run_script(train_cmd(corpus, tmp_path, method, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in epoch_rows(tmp_path / method) if r.get("train/l_main")]
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train/l_main"]))
    assert (tmp_path / method / "encoder.pt").is_file()
