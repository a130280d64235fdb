"""inference.py: folder and single-file modes, bad files reported (not skipped silently), exit
statuses, resume after a kill, colliding outputs and settings refused before any work."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import inference
from lib import extract, precision, store, synth
from lib.audio import load_audio, write_audio
from lib.checkpoint import save_checkpoint
from lib.matching.inference import decoding_workers
from models.clews import Model
from tests.corpus import ROOT, randomised
from tests.models.test_clews import tiny_conf

SR = 16000


def tiny_checkpoint(folder, randomise=None, cqt=None, **sections):
    """A small CLEWS checkpoint (2 s windows) in this project's format, config stored inside;
    ``randomise`` (a seed) gives every weight and BatchNorm statistic random values, as after
    training (a fresh model embeds every window at nearly the same point); ``cqt`` replaces
    keys of the CQT section; ``sections`` are more config sections (``data`` replaces the
    default one)."""
    torch.manual_seed(0)
    conf = tiny_conf()
    conf.shingling.len, conf.shingling.hop = 2.0, 2.0
    conf.cqt.update(cqt or {})
    model = Model(conf, sr=SR).eval()
    if randomise is not None:
        model.load_state_dict(randomised(model, randomise))
    path = folder / "ckpt" / "checkpoint_best.ckpt"
    full = {"model": conf, "data": {"samplerate": SR}, **sections}
    save_checkpoint({"model": model.state_dict(), "conf": full, "epoch": 1}, path)
    return path, model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("inference"))


def tone(seconds, freq=440.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def messy_folder(tmp_path):
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    write_audio(str(root / "a.wav"), tone(5.0), SR)
    write_audio(str(root / "sub" / "b.mp3"), tone(3.0, 330), SR)
    write_audio(str(root / "sub" / "deeper" / "c.flac"), tone(1.0, 550), 44100 // 2)
    (root / "corrupt.mp3").write_bytes(os.urandom(4000))
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.txt").write_text("not audio")
    (root / "text.ogg").write_text("a text file with an audio extension")
    return root


def run(*args):
    return inference.main([str(a) for a in args])


def test_folder_with_good_corrupt_empty_and_non_audio_files(
    checkpoint, messy_folder, tmp_path, capsys
):
    path, model = checkpoint
    out = tmp_path / "out"
    status = run(
        f"--checkpoint={path}",
        f"--path_in={messy_folder}",
        f"--path_out={out}",
        "--device=cpu",
        "--hop_size=1",
        "--nworkers=2",
    )
    captured = capsys.readouterr()
    assert status == 1  # some files failed
    done = sorted(str(p.relative_to(out)) for p in out.rglob("*.pt"))
    assert done == ["a.pt", "sub/b.pt", "sub/deeper/c.pt"]
    log = (out / "inference_failures.log").read_text().splitlines()
    failed = sorted(line.split("\t")[0] for line in log)
    assert failed == sorted(str(messy_folder / n) for n in ("corrupt.mp3", "empty.wav", "text.ogg"))
    assert all(line.split("\t")[1] for line in log)  # a reason for each
    assert "3 embedded" in captured.out and "3 failed" in captured.out
    assert "1 file(s) without an audio extension" in captured.out  # notes.txt: said, not embedded
    # (windows, dim) float32, equal to embedding the decoded audio directly
    z = torch.load(out / "a.pt", weights_only=True)
    assert z.dtype == torch.float32 and z.shape == (4, 24)  # 5 s, 2 s windows every 1 s
    audio = torch.from_numpy(load_audio(str(messy_folder / "a.wav"), SR))
    assert torch.allclose(z, extract.window_embeddings(model, audio, 2.0, 1.0, "cpu"), atol=1e-5)
    assert torch.load(out / "sub/deeper/c.pt", weights_only=True).shape == (1, 24)  # 1 s clip
    manifest = json.loads((out / "inference.json").read_text())
    assert (manifest["win_len"], manifest["hop_size"], manifest["samplerate"]) == (2.0, 1.0, SR)
    assert manifest["metric"] == "nsqeuc" and manifest["redux"] == "bpwr-5"
    # the same windows as one embedding store, in input order, with the settings
    collected = store.read(out / "store")
    assert [t["id"] for t in collected.manifest["tracks"]] == ["a", "sub/b", "sub/deeper/c"]
    assert collected.manifest["settings"]["win_len"] == 2.0 and collected.z.shape[1:] == (4, 24)
    lengths = [torch.load(out / f"{n}.pt", weights_only=True).shape[0] for n in ("a", "sub/b")]
    assert (~collected.mask).sum(1).tolist() == lengths + [1]
    assert torch.allclose(torch.from_numpy(collected.z[0].astype("float32")), z, atol=2e-3)

    # a second run keeps what is there and only retries the failures
    before = (out / "a.pt").stat().st_mtime_ns
    status = run(
        f"--checkpoint={path}",
        f"--path_in={messy_folder}",
        f"--path_out={out}",
        "--device=cpu",
        "--hop_size=1",
        "--nworkers=0",
    )
    assert status == 1 and "0 embedded" in capsys.readouterr().out
    assert (out / "a.pt").stat().st_mtime_ns == before
    # other settings into the same folder: refused before any work, unless --overwrite
    status = run(
        f"--checkpoint={path}",
        f"--path_in={messy_folder}",
        f"--path_out={out}",
        "--device=cpu",
        "--hop_size=2",
    )
    assert status == 2 and "other settings" in capsys.readouterr().err
    for bad in ("corrupt.mp3", "empty.wav", "text.ogg"):
        (messy_folder / bad).unlink()
    status = run(
        f"--checkpoint={path}",
        f"--path_in={messy_folder}",
        f"--path_out={out}",
        "--device=cpu",
        "--hop_size=2",
        "--overwrite",
    )
    assert status == 0 and not (out / "inference_failures.log").exists()
    assert torch.load(out / "a.pt", weights_only=True).shape == (3, 24)


def test_precision_option(checkpoint, messy_folder, tmp_path, capsys):
    path, _ = checkpoint
    common = [f"--checkpoint={path}", f"--path_in={messy_folder}", "--device=cpu", "--hop_size=1"]
    for bad in ("corrupt.mp3", "empty.wav", "text.ogg"):
        (messy_folder / bad).unlink()
    assert run(*common, f"--path_out={tmp_path / 'p32'}") == 0
    assert run(*common, f"--path_out={tmp_path / 'p32'}", "--precision=16") == 2
    assert "fp16 needs a GPU" in capsys.readouterr().err
    status = run(*common, f"--path_out={tmp_path / 'bf16'}", "--precision=bf16")
    if not precision.cpu_has_native_bf16():
        assert status == 2 and "no native bf16" in capsys.readouterr().err
        return
    assert status == 0
    settings = json.loads((tmp_path / "bf16" / "inference.json").read_text())
    assert settings["precision"] == "bf16-mixed"
    full = torch.load(tmp_path / "p32" / "a.pt", weights_only=True)
    mixed = torch.load(tmp_path / "bf16" / "a.pt", weights_only=True)
    assert mixed.dtype == torch.float32 and mixed.shape == full.shape
    assert 0 < ((mixed - full).norm() / full.norm()).item() < 0.05
    # a folder made in 32 bits is not topped up in bf16
    assert run(*common, f"--path_out={tmp_path / 'p32'}", "--precision=bf16") == 2
    assert "precision: '32-true' -> 'bf16-mixed'" in capsys.readouterr().err


def test_exported_backends_give_the_same_files_and_are_not_mixed(tmp_path, capsys):
    """--backend onnxruntime / openvino run the checkpoint's export (made beside it on first
    use): the same outputs as torch (relative difference < 1e-5), the backend recorded, a
    folder of one backend not topped up by another."""
    path, _ = tiny_checkpoint(tmp_path, randomise=0)  # as after training: windows apart
    music = tmp_path / "music"
    synth.make_corpus(music, works=1, versions=3, seconds=5.0, seed=0, formats=("mp3", "flac"))
    names = sorted(str(p.relative_to(music).with_suffix(".pt")) for p in music.rglob("*.*"))
    common = [f"--checkpoint={path}", f"--path_in={music}", "--device=cpu", "--hop_size=1"]
    assert run(*common, f"--path_out={tmp_path / 'torch'}") == 0
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / backend
        assert run(*common, f"--path_out={out}", f"--backend={backend}") == 0
        settings = json.loads((out / "inference.json").read_text())
        assert (settings["backend"], settings["precision"]) == (backend, "32-true")
        for name in names:
            want = torch.load(tmp_path / "torch" / name, weights_only=True)
            got = torch.load(out / name, weights_only=True)
            assert got.dtype == torch.float32 and got.shape == want.shape
            assert ((got - want).norm() / want.norm()).item() < 1e-5, (backend, name)
    exports = list((path.parent / "exported").iterdir())
    assert len(exports) == 1 and (exports[0] / "model.onnx").is_file()  # made once, reused
    capsys.readouterr()
    assert run(*common, f"--path_out={tmp_path / 'torch'}", "--backend=onnxruntime") == 2
    assert "backend: 'torch' -> 'onnxruntime'" in capsys.readouterr().err
    # the export folder itself works as --checkpoint; torch needs the checkpoint
    out = tmp_path / "from_export"
    by_export = [f"--checkpoint={exports[0]}", f"--path_in={music}", f"--path_out={out}"]
    assert run(*by_export, "--backend=openvino") == 0
    assert json.loads((out / "inference.json").read_text())["checkpoint_sha256"] == (
        json.loads((tmp_path / "torch" / "inference.json").read_text())["checkpoint_sha256"]
    )
    assert run(*by_export) == 2
    assert "the torch backend needs the checkpoint" in capsys.readouterr().err
    assert run(*by_export, "--backend=onnxruntime", "--precision=bf16") == 2
    assert "use --backend openvino for bf16" in capsys.readouterr().err
    # int8 is an export's int8 model (python -m lib.export --int8=AUDIO)
    assert run(*by_export, "--backend=openvino", "--precision=int8") == 2
    assert "no int8 model; export with python -m lib.export --int8" in capsys.readouterr().err
    assert run(*common, f"--path_out={tmp_path / 'i8'}", "--precision=int8") == 2
    assert "--backend onnxruntime or openvino" in capsys.readouterr().err


def test_single_file_mode(checkpoint, messy_folder, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "one" / "a.pt"
    assert (
        run(
            f"--checkpoint={path}",
            f"--fn_in={messy_folder / 'a.wav'}",
            f"--fn_out={out}",
            "--device=cpu",
        )
        == 0
    )
    # default hop 5 s: windows at 0 s and 5 s, the second made of the repeat padding (original)
    assert torch.load(out, weights_only=True).shape == (2, 24)
    assert (
        run(
            f"--checkpoint={path}",
            f"--fn_in={messy_folder / 'corrupt.mp3'}",
            f"--fn_out={tmp_path / 'x.pt'}",
            "--device=cpu",
        )
        == 1
    )
    assert not (tmp_path / "x.pt").exists()
    assert "corrupt.mp3" in capsys.readouterr().out
    assert (
        run(
            f"--checkpoint={path}",
            f"--fn_in={tmp_path / 'missing.wav'}",
            f"--fn_out={tmp_path / 'y.pt'}",
        )
        == 2
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--path_in=a", "--path_out=b", "--fn_in=c", "--fn_out=d"],  # both modes
        ["--path_in=a"],
        ["--fn_out=d"],
        [],
        ["--fn_in=c", "--fn_out=d", "--hop_size=0"],
        ["--fn_in=c", "--fn_out=d", "--device=tpu"],
    ],
)
def test_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        inference.parse_args(["--checkpoint=x.ckpt", *args])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_colliding_outputs_are_reported_before_any_work(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    root = tmp_path / "in"
    root.mkdir()
    write_audio(str(root / "song.wav"), tone(2.0), SR)
    write_audio(str(root / "song.mp3"), tone(2.0), SR)
    write_audio(str(root / "other.wav"), tone(2.0), SR)
    out = tmp_path / "out"
    assert run(f"--checkpoint={path}", f"--path_in={root}", f"--path_out={out}") == 2
    err = capsys.readouterr().err
    assert "song.pt" in err and "song.wav" in err and "song.mp3" in err
    assert not out.exists()  # nothing written, not even the manifest


def test_a_killed_run_leaves_complete_files_and_resumes(checkpoint, tmp_path):
    path, _ = checkpoint
    root = tmp_path / "in"
    synth.make_corpus(str(root), works=8, versions=3, seconds=12, seed=1, formats=("wav",))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "inference.py",
        f"--checkpoint={path}",
        f"--path_in={root}",
        f"--path_out={out}",
        "--device=cpu",
        "--hop_size=0.5",
        "--nworkers=1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.pt"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = list(out.rglob("*.pt"))
    assert 3 <= len(first) < 24, "the run was not interrupted midway"
    for pt in first:  # every output there is complete
        assert torch.load(pt, weights_only=True).shape[1] == 24
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{24 - len(first)} embedded" in result.stdout
    assert f"{len(first)} already there" in result.stdout
    assert len(list(out.rglob("*.pt"))) == 24
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_one_file_is_decoded_without_a_worker_process():
    # one file: nothing to overlap its decoding with; a worker would copy the waveform twice
    assert decoding_workers(2, 1) == 0
    assert decoding_workers(2, 2) == 1
    assert decoding_workers(2, 50) == 2
    assert decoding_workers(0, 50) == 0
