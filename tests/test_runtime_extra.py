"""The matcher without PyTorch (requirements-runtime.txt): in a Python where every package of
requirements.txt that the runtime extra leaves out cannot be imported (torch first), match.py
queries a catalogue, compares two recordings and serves the web page with the exported model,
with the answers PyTorch gives."""

import json
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

import match
from lib import export, synth
from lib.audio import load_audio, write_audio
from lib.matching.server import post_files, post_upload, wait_for_url
from tests.corpus import ROOT
from tests.matching.test_inference import tiny_checkpoint

SR = 16000
# import names of distributions whose name differs
MODULES = {
    "pytest-xdist": "xdist",
    "onnx-ir": "onnx_ir",
    "more-itertools": "more_itertools",
    "PyYAML": "yaml",
    "python-multipart": "multipart",
    "faiss-cpu": "faiss",
}
# installed with lightning / torch, not pinned in requirements.txt
ALSO_BLOCKED = ("lightning_fabric", "pytorch_lightning", "torchmetrics", "triton")


def pins(name):
    """{distribution: version} of a requirements file of the repository."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            dist, version = line.split("==")
            found[dist] = version
    return found


def blocked_modules():
    left_out = set(pins("requirements.txt")) - set(pins("requirements-runtime.txt"))
    return sorted({MODULES.get(d, d.replace("-", "_")) for d in left_out} | set(ALSO_BLOCKED))


def test_runtime_pins_are_the_full_installs():
    full, runtime = pins("requirements.txt"), pins("requirements-runtime.txt")
    assert {d: full.get(d) for d in runtime} == runtime
    assert "torch" not in runtime and "torch" in blocked_modules()


BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = set({blocked!r})

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}}: not in requirements-runtime.txt")
        return None

sys.meta_path.insert(0, Refuse())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.argv = ["match.py", *sys.argv[1:]]
runpy.run_path("match.py", run_name="__main__")
"""


def torch_free(*args, **popen):
    """``match.py args`` in a Python that cannot import what the runtime extra leaves out."""
    command = [sys.executable, "-c", BLOCKER.format(blocked=blocked_modules()), *map(str, args)]
    if popen:
        return subprocess.Popen(command, cwd=ROOT, text=True, **popen)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A catalogue built with PyTorch, and its checkpoint's export beside the checkpoint."""
    root = tmp_path_factory.mktemp("torch_free")
    path, _ = tiny_checkpoint(root, randomise=5)  # 2 s windows
    audio = root / "audio"
    synth.make_corpus(str(audio), works=4, versions=2, seconds=20, seed=3, formats=("mp3", "wav"))
    cat = root / "cat"
    index = ["index", f"--checkpoint={path}", f"--audio={audio}", f"--out={cat}"]
    assert match.main([*index, "--device=cpu", "--hop_size=1", "--nworkers=0"]) == 0
    export.exported(str(path), say=lambda _: None)
    source = sorted((audio / "work002").glob("v1.*"))[0]
    clip = root / "clip.wav"
    write_audio(str(clip), load_audio(str(source), SR)[4 * SR : 12 * SR], SR)
    return root, cat, audio, clip, source


def test_query_and_compare_without_torch(setup, tmp_path):
    root, cat, audio, clip, source = setup
    want = tmp_path / "torch.json"
    assert match.main(["query", str(clip), f"--catalogue={cat}", "--device=cpu",
                       f"--json={want}", "--exact"]) == 0
    got = tmp_path / "onnx.json"
    done = torch_free("query", clip, f"--catalogue={cat}", "--backend=onnxruntime", "--exact",
                      f"--json={got}")
    assert done.returncode == 0, done.stderr
    assert "(onnxruntime, 32-true)" in done.stdout
    mine, theirs = json.loads(got.read_text())[0], json.loads(want.read_text())[0]
    assert [m["id"] for m in mine["matches"]] == [m["id"] for m in theirs["matches"]]
    assert mine["matches"][0]["id"] == "work002/v1"
    for a, b in zip(mine["matches"], theirs["matches"]):
        assert a["distance"] == pytest.approx(b["distance"], rel=1e-4, abs=1e-6)
        assert a["track_s"] == b["track_s"]
    plot = tmp_path / "c.png"
    done = torch_free("compare", clip, source, f"--catalogue={cat}", "--backend=openvino",
                      f"--json={tmp_path / 'c.json'}", f"--plot={plot}")
    assert done.returncode == 0, done.stderr
    compared = json.loads((tmp_path / "c.json").read_text())
    assert abs(compared["b_s"][0] - 4.0) <= 2.0 and plot.read_bytes().startswith(b"\x89PNG")
    # what needs PyTorch says so
    done = torch_free("index", f"--checkpoint={root / 'ckpt' / 'checkpoint_best.ckpt'}",
                      f"--audio={audio}", f"--out={tmp_path / 'new'}")
    assert done.returncode != 0 and "torch: not in requirements-runtime.txt" in done.stderr


def test_the_web_page_without_torch(setup):
    root, cat, _, clip, source = setup
    process = torch_free("serve", f"--catalogue={cat}", "--backend=onnxruntime", "--port=0",
                         "--topk=3", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    try:
        url = wait_for_url(process.stdout, lines.append)
        assert url is not None, "".join(lines)
        status, text = post_upload(url, "clip.wav", clip.read_bytes(), fmt="json")
        assert status == 200, text
        assert json.loads(text)["matches"][0]["id"] == "work002/v1"
        status, page = post_upload(url, "clip.wav", clip.read_bytes())
        token = re.search(r"picture/([0-9a-f]+)/(\d+)", page)
        with urllib.request.urlopen(url + token.group(0), timeout=60) as reply:
            assert reply.read().startswith(b"\x89PNG")
        pair = [("a", "clip.wav", clip.read_bytes()), ("b", source.name, source.read_bytes())]
        status, text = post_files(url, "compare", pair, fmt="json")
        assert status == 200 and np.isfinite(json.loads(text)["distance"]), text
    finally:
        process.terminate()
        process.wait(timeout=30)
