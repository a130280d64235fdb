"""lib/runtime.py: numpy framing equal to the PyTorch path's, backends and precisions checked
before anything runs, OpenVINO's bf16 a precision of its own, and the module working in a Python
where torch cannot be imported."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lib import export, runtime, tensor_ops
from lib.errors import UsageError
from tests.corpus import ROOT

DEMO = ROOT / "tests" / "trained" / "demo-clews.pt"


@pytest.mark.parametrize("pad", ["zeros", "repeat"])
@pytest.mark.parametrize("samples", [5, 37, 40, 41, 64])
def test_framing_equals_the_models(pad, samples):
    """``frame`` = the waveform completed once (extract.window_embeddings), framed and each
    window grown to the training length (SegmentModel.shingles)."""
    x = np.arange(1, samples + 1, dtype=np.float32)
    length, hop, minimum = 8, 3, 20
    got = runtime.frame(x, length, hop, pad, minimum, pad)
    count = runtime.frame_count(samples, length, hop)
    total = (count - 1) * hop + length
    t = torch.from_numpy(x)
    if samples < total:
        t = tensor_ops.force_length(t, total, pad_mode=pad)
    frames = tensor_ops.get_frames(t, length, hop, pad_mode=pad)
    want = tensor_ops.force_length(frames, minimum, pad_mode=pad, allow_longer=True)
    assert got.shape == tuple(want.shape) and got.shape[0] == count
    assert np.array_equal(got, want.numpy())


def test_backend_and_precision_are_checked_first():
    assert runtime.check_backend("onnxruntime", "32") == "32-true"
    assert runtime.check_backend("openvino", "bf16") == "bf16-mixed"
    with pytest.raises(UsageError, match="use --backend openvino for bf16"):
        runtime.check_backend("onnxruntime", "bf16")
    with pytest.raises(UsageError, match="not offered with --backend openvino"):
        runtime.check_backend("openvino", "16")
    with pytest.raises(UsageError, match="not one of"):
        runtime.check_backend("openvino", "8")
    with pytest.raises(UsageError, match="runs on onnxruntime or openvino"):
        runtime.check_backend("torch", "32")


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "demo"
    export.export(DEMO, out, say=lambda _: None)
    return out


def test_not_an_export(tmp_path):
    with pytest.raises(runtime.ExportError, match="not a folder written by lib.export"):
        runtime.ExportedModel(tmp_path)
    (tmp_path / runtime.INFO_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(runtime.ExportError, match="not an export of format 1"):
        runtime.ExportedModel(tmp_path)


BF16 = """
import sys
import numpy as np
import openvino
from lib import runtime
from lib.errors import UsageError
audio = (0.1 * np.random.default_rng(0).standard_normal(8000 * 30)).astype(np.float32)
full = runtime.ExportedModel(sys.argv[1], "openvino", "32", threads=1)
z32 = full.window_embeddings(audio, 10.0, 5.0)
if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
    try:
        runtime.ExportedModel(sys.argv[1], "openvino", "bf16")
    except UsageError as err:
        print("refused", err)
    sys.exit(0)
half = runtime.ExportedModel(sys.argv[1], "openvino", "bf16", threads=1)
z16 = half.window_embeddings(audio, 10.0, 5.0)
assert z16.dtype == np.float32 and z16.shape == z32.shape and full.precision == "32-true"
print("diff", np.linalg.norm(z16 - z32) / np.linalg.norm(z32))
"""


def test_openvino_bf16_is_a_precision_of_its_own(demo_export):
    """In a process of its own: OpenVINO's bf16 kernels, compiled in a pytest worker that has
    forked decoding processes before, crash a later ONNX Runtime session there (segmentation
    fault, seen with test_readme_api.py first); one process per use, as match.py runs, is fine."""
    done = subprocess.run(
        [sys.executable, "-c", BF16, str(demo_export)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    kind, value = done.stdout.split()[:2]
    if kind == "refused":
        assert "no native bf16" in done.stdout
        return
    assert 1e-5 < float(value) < 0.05  # other numbers than fp32, close to them


TORCH_FREE = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from lib import runtime
model = runtime.ExportedModel(sys.argv[1], "onnxruntime", threads=1)
audio = np.load(sys.argv[2])
np.save(sys.argv[3], model.window_embeddings(audio, 10.0, 5.0))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "nnAudio")))
"""


def test_runs_where_torch_cannot_be_imported(demo_export, tmp_path):
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(8000 * 23)).astype(np.float32)
    np.save(tmp_path / "audio.npy", audio)
    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(demo_export), str(tmp_path / "audio.npy"),
         str(tmp_path / "z.npy")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['torch']"  # the blocked entry only
    here = runtime.ExportedModel(demo_export, "onnxruntime", threads=1)
    assert np.allclose(np.load(tmp_path / "z.npy"), here.window_embeddings(audio, 10.0, 5.0))
