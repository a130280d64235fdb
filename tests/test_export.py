"""lib/export.py: every model that inference.py takes exports to ONNX, and the export run by
ONNX Runtime gives PyTorch's embeddings (fp32, relative difference < 1e-5), framing included;
models of pitch-class features and folders that are not exports are refused."""

import json

import numpy as np
import onnx
import pytest
import torch
from omegaconf import OmegaConf

from lib import export, runtime, synth
from lib.checkpoint import save_checkpoint
from lib.errors import UsageError
from lib.extract import window_embeddings
from lib.model_base import build_model

# the small config of every model that embeds audio (Deezer's backbone has one, its own)
AUDIO_MODELS = {
    "clews": "config/small-clews.yaml",
    "cqtnet": "config/small-cqtnet.yaml",
    "dvinetp": "config/small-dvinetp.yaml",
    "bytecover2x": "config/small-bytecover2x.yaml",
    "bytecover3x": "config/small-bytecover3x.yaml",
    "coverhunterc": "config/small-coverhunterc.yaml",
    "move": "config/small-move.yaml",
    "deezer": "config/zeroshot-deezer.yaml",
}


def random_checkpoint(folder, conf_path, seed=0, **model_keys):
    """A checkpoint of the model of ``conf_path`` with random weights and BatchNorm statistics
    (a fresh model embeds every window nearly alike), its config stored inside."""
    conf = OmegaConf.load(conf_path)
    conf.model.update(model_keys)
    torch.manual_seed(seed)
    model = build_model(conf.model, sr=conf.data.samplerate).eval()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("running_var"):
            value = 0.5 + torch.rand(value.shape, generator=generator)
        elif name.endswith("running_mean"):
            value = 0.1 * torch.randn(value.shape, generator=generator)
        state[name] = value
    path = folder / f"{conf.model.name}.ckpt"
    save_checkpoint({"model": state, "conf": conf, "epoch": 1}, path)
    model.load_state_dict(state)
    return path, model


def relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", list(AUDIO_MODELS))
def test_every_audio_model_exports_with_pytorchs_embeddings(name, tmp_path):
    path, model = random_checkpoint(tmp_path, AUDIO_MODELS[name])
    info = export.export(path, tmp_path / "out", say=lambda _: None)
    written = json.loads((tmp_path / "out" / runtime.INFO_FILE).read_text())
    assert written == info and written["model"] == name
    assert written["checkpoint_sha256"] == runtime.file_digest(path)
    assert written["samplerate"] == model.sr and written["embedding_dim"] == model.embedding_dim
    assert (written["segment_metric"], written["redux"]) == (
        model.segment_metric,
        model.default_redux,
    )
    assert written["fixed_window"] == (name == "deezer")
    # the CQT models' transforms are exported compact (lib.layers.CompactCqt), checked as well
    assert written["compact_cqt"] == (0 if name == "deezer" else 1)
    assert len(written["checked"]) == 2
    assert all(c["relative_difference"] < export.TOLERANCE for c in written["checked"])
    # the runtime frames a waveform as the PyTorch path does: 3.3 windows, the last padded
    exported = runtime.ExportedModel(tmp_path / "out", "onnxruntime", threads=1)
    win_len = exported.train_len
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(int((2.3 * win_len + 0.37) * model.sr))).astype(np.float32)
    hop = win_len if name == "deezer" else win_len / 2
    with torch.inference_mode():
        want = window_embeddings(model, torch.from_numpy(audio), win_len, hop, "cpu").numpy()
    got = exported.window_embeddings(audio, win_len, hop)
    assert got.shape == want.shape and got.dtype == np.float32
    assert relative(got, want) < export.TOLERANCE


def test_windows_shorter_than_the_training_length_and_whole_tracks(tmp_path):
    """CLEWS grows a short window by whole copies of itself; win_len <= 0 embeds the whole
    waveform as one window; both as in PyTorch, on ONNX Runtime and on OpenVINO in fp32."""
    path, model = random_checkpoint(tmp_path, "config/small-clews.yaml")
    export.export(path, tmp_path / "out", say=lambda _: None)
    rng = np.random.default_rng(2)
    audio = (0.1 * rng.standard_normal(int(31.3 * model.sr))).astype(np.float32)
    for backend in ("onnxruntime", "openvino"):
        exported = runtime.ExportedModel(tmp_path / "out", backend, "32", threads=1)
        for win_len, hop in ((4.0, 1.5), (-1, 5.0), (12.5, 5.0)):
            with torch.inference_mode():
                want = window_embeddings(model, torch.from_numpy(audio), win_len, hop, "cpu")
            got = exported.window_embeddings(audio, win_len, hop)
            assert got.shape == tuple(want.shape), (backend, win_len)
            assert relative(got, want.numpy()) < export.TOLERANCE, (backend, win_len)


def test_export_refusals(tmp_path, capsys):
    path, _ = random_checkpoint(tmp_path, "config/small-cqtnet.yaml")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert export.main([str(path), str(taken)]) == 2
    assert "is not an export" in capsys.readouterr().err
    assert (taken / "notes.txt").read_text() == "mine"  # nothing destroyed
    assert export.main([str(tmp_path / "missing.ckpt"), str(tmp_path / "x")]) == 1
    assert "missing.ckpt" in capsys.readouterr().err
    # a model of precomputed pitch classes takes no audio: nothing to export for the runtime
    pcp, _ = random_checkpoint(tmp_path, "config/small-move.yaml", input="pcp")
    assert export.main([str(pcp), str(tmp_path / "pcp")]) == 2
    assert "pitch-class features" in capsys.readouterr().err
    assert not (tmp_path / "pcp").exists()
    # an export is not overwritten unless asked
    out = tmp_path / "out"
    assert export.main([str(path), str(out)]) == 0
    assert export.main([str(path), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert export.main([str(path), str(out), "--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export-")] == []


def test_int8_model_calibrated_on_music(tmp_path, capsys):
    """--int8=AUDIO adds a statically quantized model (activation ranges from that music) that
    both exported backends run at --precision int8: close to fp32, not equal; an export without
    one says how to make it."""
    path, model = random_checkpoint(tmp_path, "config/small-clews.yaml")
    music = tmp_path / "music"
    synth.make_corpus(music, works=2, versions=2, seconds=12.0, seed=1, formats=("wav",))
    (music / "broken.mp3").write_bytes(b"not audio")  # skipped: others are plenty
    out = tmp_path / "out"
    assert export.main([str(path), str(out), f"--int8={music}", "--int8_windows=8"]) == 0
    info = json.loads((out / runtime.INFO_FILE).read_text())
    assert info["int8"]["calibration"]["windows"] == 8
    assert 0 < info["int8"]["relative_difference"] < 0.2
    assert (out / runtime.INT8_FILE).is_file()
    # the CQT's convolutions (one per octave of the compact transform) stay fp32
    graph = onnx.load(out / runtime.INT8_FILE, load_external_data=False).graph
    weights = {tensor.name: tensor.data_type for tensor in graph.initializer}
    cqt = [n.input[1] for n in graph.node if n.op_type == "Conv" and "cqt" in n.input[1]]
    assert len(cqt) == model.conf.cqt.noctaves
    assert all(weights.get(name) == onnx.TensorProto.FLOAT for name in cqt), cqt
    others = [n.input[1] for n in graph.node if n.op_type == "Conv" and "cqt" not in n.input[1]]
    assert others and all(name not in weights for name in others)  # dequantized int8
    rng = np.random.default_rng(5)
    audio = (0.1 * rng.standard_normal(int(25 * model.sr))).astype(np.float32)
    full = runtime.ExportedModel(out, "onnxruntime", "32", threads=1).window_embeddings(
        audio, 10.0, 5.0
    )
    for backend in ("onnxruntime", "openvino"):
        eight = runtime.ExportedModel(out, backend, "int8", threads=1)
        assert eight.precision == "int8"
        z = eight.window_embeddings(audio, 10.0, 5.0)
        diff = np.linalg.norm(z - full) / np.linalg.norm(full)
        assert z.shape == full.shape and 1e-4 < diff < 0.3, (backend, diff)
    plain = tmp_path / "plain"
    export.export(path, plain, say=lambda _: None)
    with pytest.raises(UsageError, match="--int8=AUDIO_FOLDER"):
        runtime.ExportedModel(plain, "onnxruntime", "int8")
    assert export.main([str(path), str(tmp_path / "x"), f"--int8={tmp_path / 'nothing'}"]) == 2
    assert "no audio files to calibrate" in capsys.readouterr().err
