"""The Deezer multi-view SSL backbone (models/deezer.py) against the reference
(../shared/reference/multiview_ssl.md sections 2 and 5): parameter count, state-dict names and
shapes, the front end, released weight files in both key layouts, and test.py / inference.py with
such a file."""

import json
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lib.checkpoint import CheckpointError, load_trained_model
from lib.model_base import build_model
from tests.corpus import folder_corpus, run_script

CONF = "config/zeroshot-deezer.yaml"


def model(seed=0):
    torch.manual_seed(seed)
    return build_model(OmegaConf.load(CONF).model, sr=16000).eval()


def test_parameter_count_and_state_names_are_the_reference_ones():
    net = model()
    assert sum(p.numel() for p in net.parameters()) == 2_800_392
    state = net.state_dict()
    assert len(state) == 341
    assert state["spec.spec.spectrogram.window"].shape == (1024,)
    assert state["spec.spec.mel_scale.fb"].shape == (513, 128)
    assert state["embedding.attnpool.positional_embedding"].shape == (13, 512)
    assert state["embedding.attnpool.c_proj.weight"].shape == (1024, 512)
    for name in ("q_proj", "k_proj", "v_proj"):
        assert state[f"embedding.attnpool.{name}.weight"].shape == (512, 512)
        assert state[f"embedding.attnpool.{name}.bias"].shape == (512,)
    for stem in (1, 2, 3):
        assert f"embedding.conv{stem}.weight" in state
        assert f"embedding.bn{stem}.num_batches_tracked" in state
    blocks = {k.split(".")[1] + "." + k.split(".")[2] for k in state if ".layer" in k}
    assert len(blocks) == 3 + 4 + 6 + 3
    # block 0 of each layer: the shortcut convolution (index 0) and BN (index 1) of the
    # pooled shortcut ("-1" is the parameter-free average pool)
    for layer in range(1, 5):
        assert state[f"embedding.layer{layer}.0.downsample.0.weight"].ndim == 4
        assert f"embedding.layer{layer}.0.downsample.1.running_var" in state
        assert f"embedding.layer{layer}.1.downsample.0.weight" not in state
    by_stage = {}
    for key, value in net.named_parameters():
        stage = key.split(".")[1]
        stage = "stem" if stage.startswith(("conv", "bn")) else stage
        by_stage[stage] = by_stage.get(stage, 0) + value.numel()
    assert by_stage == {
        "stem": 1_864,
        "layer1": 14_016,
        "layer2": 77_568,
        "layer3": 447_488,
        "layer4": 939_520,
        "attnpool": 1_319_936,
    }


def test_front_end_four_seconds_and_the_top_db_floor():
    net = model()
    t = torch.arange(64000) / 16000
    x = (0.5 * torch.sin(2 * torch.pi * 440 * t))[None]
    mel = net.prepare(x)
    assert mel.shape == (1, 1, 128, 126)  # 64000 // 512 + 1 frames
    peak = mel.max()
    assert mel.min() >= peak - 100 - 1e-4
    # above 8 kHz (Nyquist) the released filter bank has empty bands: they sit at the floor
    assert torch.allclose(mel[0, 0, 117:], torch.full_like(mel[0, 0, 117:], peak - 100))
    # the 440 Hz band is the loudest, and the level does not depend on the gain
    assert int(mel[0, 0].mean(-1).argmax()) < 30
    assert torch.allclose(net.prepare(0.1 * x), mel, atol=0.01)
    assert net.embed(mel)[0].shape == (1, 1, 1024)
    with pytest.raises(ValueError, match="4 s windows only"):
        net.prepare(x, shingle_len=20, shingle_hop=20)


def released_file(path, net, layout, other=None):
    """A weight file as the benchmark's trainer saved it: the whole SSL model under DDP
    prefixes in ``model`` (the backbone, a projector head, and for BYOL / clustering an unwrapped
    teacher), with the trainer's other keys."""
    weights = {}
    if layout == "contrastive":
        weights.update({f"module.backbone.{k}": v for k, v in net.state_dict().items()})
        weights["module.head.ops.0.weight"] = torch.randn(1024, 1024)
    else:
        weights.update({f"student.module.backbone.{k}": v for k, v in net.state_dict().items()})
        weights.update({f"teacher.backbone.{k}": v for k, v in other.state_dict().items()})
        weights["student.module.head.ops.0.weight"] = torch.randn(1024, 1024)
        weights["projector.ops.0.weight"] = torch.randn(256, 2048)
    state = {
        "model": weights,
        "pretext": layout,
        "epoch": 10,
        "val_loss": 0.5,
        "gin_info": ["SSLModel.pretext = 'x'"],
    }
    torch.save(state, path)
    return path


def test_released_files_load_by_their_key_prefixes(tmp_path):
    source, teacher = model(seed=1), model(seed=2)
    x = torch.randn(1, 16000 * 9, generator=torch.Generator().manual_seed(0))
    want = source.embed(source.prepare(x))[0]
    for layout in ("contrastive", "byol"):
        path = released_file(tmp_path / f"{layout}.pt", source, layout, other=teacher)
        loaded, conf, _ = load_trained_model(path, CONF)
        assert conf.model.name == "deezer"
        got = loaded.embed(loaded.prepare(x))[0]
        assert got.shape == (1, 3, 1024) and torch.allclose(got, want, atol=1e-5)  # the student
    wrong = {"model": {"module.backbone.embedding.conv1.weight": torch.zeros(8, 1, 3, 3)}}
    torch.save(wrong, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_trained_model(tmp_path / "partial.pt", CONF)


def test_test_py_and_inference_py_take_a_released_file(tmp_path):
    corpus = folder_corpus(tmp_path / "corpus", 4, 2, 9, seed=3, split="0,0,1")
    path = released_file(tmp_path / "contrastive.pt", model(seed=4), "contrastive")
    test = [sys.executable, "test.py", f"checkpoint={path}", f"conf={CONF}", "accelerator=cpu"]
    test += [f"path_audio={corpus / 'audio'}", f"path_meta={corpus / 'meta.pt'}", "nworkers=0"]
    test += [f"cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'out'}"]
    result = run_script(test)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert run["redux"] == "mean" and run["n_queries"] == 8 and 0 < run["MAP"]["mean"] <= 1
    result = run_script(test[:-2] + [f"cache_dir={tmp_path / 'c2'}", "qslen=20"])
    assert result.returncode != 0 and "4 s windows only" in result.stderr
    audio = next((corpus / "audio").rglob("*.wav"))
    infer = [sys.executable, "inference.py", f"--checkpoint={path}", f"--conf={CONF}"]
    infer += [f"--fn_in={audio}", f"--fn_out={tmp_path / 'z.pt'}", "--hop_size=4"]
    infer += ["--device=cpu"]
    result = run_script(infer)
    assert result.returncode == 0, result.stderr[-3000:]
    z = torch.load(tmp_path / "z.pt", weights_only=True)  # (windows, 1024), 4 s every 4 s
    assert z.ndim == 2 and z.shape[1] == 1024 and z.shape[0] >= 2
    assert np.isfinite(z.numpy()).all()


def test_train_py_refuses_the_frozen_backbone(tmp_path):
    train = [sys.executable, "train.py", "jobname=deezer", f"conf={CONF}", "fabric.accelerator=cpu"]
    result = run_script(train + [f"path.logs={tmp_path}"])
    assert result.returncode == 2
    assert "model.name=deezer: a frozen, pre-trained embedding" in result.stderr
    assert "Traceback" not in result.stderr
