"""Embedding audio without PyTorch: a model exported by ``lib.export`` run by ONNX Runtime or
OpenVINO, on numpy arrays. This module and what it imports need no torch (checked by
``tests/test_runtime.py``), so the matcher runs from the small ``requirements-runtime.txt``.

The exported graph maps windows (B, S, L) float32 samples at the model's rate to embeddings
(B, S, D); framing a waveform into windows happens here, as the PyTorch path frames it
(``lib.extract.window_embeddings``): windows of ``win_len`` s every ``hop`` s, the waveform
completed once at its end with the model's ``frame_pad``, each window grown by whole copies to at
least the training length with ``min_pad``.

Backends and precisions (``--backend``, ``--precision``; fp32 is the default everywhere and
gives the PyTorch numbers to < 1e-5):
    onnxruntime 32   ONNX Runtime's CPU (or CUDA) execution provider in fp32
    openvino    32   OpenVINO with the inference precision hint f32 (no silent bf16)
    openvino    bf16 OpenVINO with the inference precision hint bf16: its own bf16 kernels, on a
                     CPU that computes bf16 natively (AVX512-BF16 or AMX); a precision, like
                     PyTorch's bf16 autocast, not the same numbers as fp32
    either      int8 the export's int8 model (``python -m lib.export --int8=AUDIO``: weights and
                     activations quantized, activation ranges measured on that music)
"""

import abc
import hashlib
import json
import math
import os

import numpy as np

from lib import reductions
from lib.errors import RunError, UsageError

BACKENDS = ("torch", "onnxruntime", "openvino")
# what embeddings recorded before their backend and precision were (folders, catalogues) were
# made with
FORMER_SETTINGS = {"backend": "torch", "precision": "32-true"}
EXPORT_FORMAT = 1
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # with ``python -m lib.export --int8=AUDIO``
INFO_FILE = "model.json"
PRECISION_NAMES = {"32": "32-true", "32-true": "32-true", "bf16": "bf16-mixed"}
PRECISION_NAMES.update({"bf16-mixed": "bf16-mixed", "16": "16-mixed", "16-mixed": "16-mixed"})
PRECISION_NAMES["int8"] = "int8"


class ExportError(RunError):
    """An exported model that cannot be used (missing, damaged, of another format)."""


def frame_count(nsamples, length, hop):
    """Windows of ``length`` samples every ``hop`` samples over ``nsamples`` samples, the last
    one completed by padding (the model's framing): max(ceil((T - L) / H), 0) + 1."""
    return max(-(-(nsamples - length) // hop), 0) + 1


def whole_window_seconds(nsamples, sr):
    """Window length in seconds that frames ``nsamples`` samples at ``sr`` as one window: half a
    sample more, so that int(seconds * sr) gives back the whole length despite rounding (one
    sample short would add a second, padded window)."""
    return (max(nsamples, 1) + 0.5) / sr


def grow(x, length, pad_mode):
    """``x`` (..., T) grown by whole copies of itself (``repeat``) or of zeros (``zeros``) to at
    least ``length`` samples along its last axis (``lib.tensor_ops.force_length``'s growth)."""
    copies = math.ceil(length / x.shape[-1])
    if copies <= 1:
        return x
    if pad_mode == "repeat":
        return np.concatenate([x] * copies, axis=-1)
    if pad_mode == "zeros":
        return np.concatenate([x] + [np.zeros_like(x)] * (copies - 1), axis=-1)
    raise ValueError(f"pad mode {pad_mode!r}: an exported model frames with repeat or zeros")


def frame(waveform, length, hop, frame_pad, min_length, min_pad):
    """Windows (S, L') float32 of a waveform (T,): ``length`` samples every ``hop``, the
    waveform completed at its end with ``frame_pad`` (grown, then cut), each window grown to at
    least ``min_length`` samples with ``min_pad``."""
    count = frame_count(waveform.shape[-1], length, hop)
    total = (count - 1) * hop + length
    if waveform.shape[-1] < total:
        waveform = grow(waveform, total, frame_pad)[:total]
    starts = np.arange(count) * hop
    windows = np.lib.stride_tricks.sliding_window_view(waveform, length)[starts]
    return np.ascontiguousarray(grow(windows, min_length, min_pad), dtype=np.float32)


class WindowModel(abc.ABC):
    """What embeds the windows of a waveform, whatever runs it: the PyTorch model
    (``lib.matching.inference.TorchWindows``) or an exported one (``ExportedModel``). The
    catalogue, the matcher and ``inference.py`` use only this."""

    backend: str  # one of BACKENDS
    precision: str  # Fabric's name: 32-true, bf16-mixed, 16-mixed
    samplerate: int  # Hz of the waveforms it embeds
    name: str  # the model's name (models/<name>.py)
    segment_metric: str  # distance between window embeddings
    default_redux: str  # reduction of window distances to a track distance
    train_len: float  # seconds: the training window length (the default window)
    checkpoint: str  # the checkpoint file (what catalogues record)
    device: str  # where it runs

    @abc.abstractmethod
    def window_embeddings(self, waveform, win_len, hop, max_windows=32):
        """(S, D) float32 numpy embeddings of a waveform (T,) at ``samplerate``: windows of
        ``win_len`` s (<= 0: the whole waveform as one window) every ``hop`` s, ``max_windows``
        at a time."""

    @property
    @abc.abstractmethod
    def digest(self):
        """sha256 of the checkpoint the weights come from."""

    def window_length(self, win_len=None):
        """Seconds per window: ``win_len``, or the training length when None or <= 0."""
        return float(win_len) if win_len is not None and win_len > 0 else float(self.train_len)

    def track_scores(self, query, z, mask, redux, metric):
        """A catalogue query's track distances (``reductions.track_scores``: numpy; the torch
        backend computes them with its retrieval engine, as catalogues always have)."""
        return reductions.track_scores(query, z, mask, redux, metric)


###################################################################################################
# Exported models
###################################################################################################


def read_info(folder):
    """The ``model.json`` of an exported model folder; ``ExportError`` naming what is wrong."""
    path = os.path.join(folder, INFO_FILE)
    if not os.path.isfile(path):
        raise ExportError(f"{folder}: no {INFO_FILE} (not a folder written by lib.export)")
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: unreadable ({err})") from err
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: not an export of format {EXPORT_FORMAT}")
    if not os.path.isfile(os.path.join(folder, info.get("model_file", MODEL_FILE))):
        raise ExportError(f"{folder}: {MODEL_FILE} is missing")
    return info


def export_folder_for(checkpoint, digest):
    """Where the export of a checkpoint is kept when ``inference.py`` / ``match.py`` are asked
    to run it on an exported backend: ``<checkpoint folder>/exported/<digest>``."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    return os.path.join(folder, "exported", digest[:16])


def export_beside(checkpoint, digest=None):
    """The export kept beside ``checkpoint`` (``export_folder_for``) when it is there and of
    these weights, else None; ``digest``: the checkpoint's sha256 when known (hashing a
    full-size checkpoint takes seconds)."""
    if not os.path.isfile(checkpoint):
        return None
    digest = digest or file_digest(checkpoint)
    folder = export_folder_for(checkpoint, digest)
    if is_export(folder) and read_info(folder)["checkpoint_sha256"] == digest:
        return folder
    return None


def is_export(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, INFO_FILE))


def check_backend(backend, precision, device="cpu"):
    """Fabric's name of ``precision`` for an exported model on ``backend`` (or ``int8``: the
    export's int8 model, on either backend); ``UsageError`` naming the pair when the backend
    does not offer it (fp16 and ONNX Runtime's bf16 would be other graphs: not offered)."""
    if backend not in BACKENDS[1:]:
        raise UsageError(f"--backend {backend}: an exported model runs on onnxruntime or openvino")
    name = PRECISION_NAMES.get(str(precision))
    if name is None:
        raise UsageError(f"--precision {precision}: not one of 32, bf16, 16, int8")
    if name == "16-mixed":
        raise UsageError(f"--precision {precision}: not offered with --backend {backend}; use 32")
    if name == "bf16-mixed" and backend == "onnxruntime":
        raise UsageError(
            "--precision bf16 with --backend onnxruntime: ONNX Runtime runs the fp32 graph "
            "only; use --backend openvino for bf16"
        )
    if device not in ("cpu", "auto") and backend == "openvino":
        raise UsageError(f"--device {device}: the openvino backend runs on the CPU here")
    return name


def file_digest(path, chunk=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ExportedModel(WindowModel):
    """A ``lib.export`` folder run by ``backend`` (onnxruntime or openvino) at ``precision``;
    ``threads``: intra-op threads (None: every core this process may use, as PyTorch does;
    ONNX Runtime's own default counts physical cores and may leave half of them idle)."""

    def __init__(self, folder, backend="onnxruntime", precision="32", device="cpu", threads=None):
        self.folder = os.fspath(folder)
        self.info = read_info(self.folder)
        self.backend = backend
        self.precision = check_backend(backend, precision, device)
        self.device = resolved_device(device, backend)
        info = self.info
        self.samplerate, self.name = int(info["samplerate"]), info["model"]
        self.segment_metric, self.default_redux = info["segment_metric"], info["redux"]
        self.train_len, self.embedding_dim = float(info["win_len"]), int(info["embedding_dim"])
        self.checkpoint = info["checkpoint"]
        self._digest = info["checkpoint_sha256"]
        path = os.path.join(self.folder, info.get("model_file", MODEL_FILE))
        if self.precision == "int8":
            if "int8" not in info:
                raise UsageError(
                    f"{self.folder}: no int8 model; export with python -m lib.export "
                    "--int8=AUDIO_FOLDER (music to calibrate it on)"
                )
            path = os.path.join(self.folder, info["int8"]["model_file"])
        threads = threads or default_threads()
        if backend == "onnxruntime":
            self._run = onnxruntime_session(path, device, threads)
            self.device = f"{self.device} ({self._run.provider})"
        else:
            self._run = openvino_model(path, self.precision, threads)

    @property
    def digest(self):
        return self._digest

    def embed_windows(self, windows):
        """(S, D) float32 embeddings of windows (S, L) float32."""
        return np.asarray(self._run(windows[None])[0][0], dtype=np.float32)

    def window_embeddings(self, waveform, win_len, hop, max_windows=32):
        x = np.asarray(waveform, dtype=np.float32)
        sr = self.samplerate
        if win_len <= 0:
            win_len = hop = whole_window_seconds(x.shape[-1], sr)
        if self.info["fixed_window"] and abs(win_len - self.train_len) > 1e-9:
            raise UsageError(
                f"{self.name} embeds {self.train_len:g} s windows only, not {win_len:g} s"
            )
        length, step = int(win_len * sr), int(hop * sr)
        minimum = int(self.info["min_len"] * sr)
        windows = frame(x, length, step, self.info["frame_pad"], minimum, self.info["min_pad"])
        parts = [
            self.embed_windows(windows[first : first + max_windows])
            for first in range(0, len(windows), max_windows)
        ]
        return np.concatenate(parts)


def resolved_device(device, backend):
    """``device`` with ``auto`` made concrete: ONNX Runtime's GPU when its build has one, else
    the CPU (OpenVINO runs on the CPU here)."""
    if device != "auto":
        return str(device)
    if backend == "onnxruntime":
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "cuda"
    return "cpu"


def default_threads():
    """The cores this process may use (PyTorch's default thread count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def onnxruntime_session(path, device, threads):
    """A function windows (B, S, L) -> [embeddings (B, S, D)] of an ONNX Runtime session on
    the CPU, or on a GPU (``device`` cuda[:N]) by TensorRT's execution provider (CUDA's where
    TensorRT cannot build the graph); its ``provider`` attribute names the one that runs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    choices = [["CPUExecutionProvider"]]
    if str(device).startswith("cuda"):
        available = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise UsageError(
                f"--device {device}: this onnxruntime has no CUDA execution provider "
                "(install onnxruntime-gpu)"
            )
        index = {"device_id": int(str(device).partition(":")[2] or 0)}
        cuda = [("CUDAExecutionProvider", index), "CPUExecutionProvider"]
        choices = [cuda]
        if "TensorrtExecutionProvider" in available:
            choices.insert(0, [("TensorrtExecutionProvider", index)] + cuda)
    for k, providers in enumerate(choices):
        try:
            session = onnxruntime.InferenceSession(path, options, providers=providers)
            break
        except Exception:  # TensorRT libraries missing or the graph refused: CUDA then
            if k == len(choices) - 1:
                raise
    name = session.get_inputs()[0].name

    def run(windows):
        return session.run(None, {name: windows})

    run.provider = session.get_providers()[0]
    return run


def openvino_model(path, precision, threads):
    """A function windows (B, S, L) -> [embeddings (B, S, D)] of an OpenVINO CPU model compiled
    with the inference precision hint of ``precision`` (f32 or bf16; an int8 model's quantized
    layers run in int8 under f32)."""
    import openvino

    core = openvino.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16-mixed" else "f32"}
    config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision == "bf16-mixed":
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            raise UsageError(
                "--precision bf16: this CPU has no native bf16 for OpenVINO "
                f"(capabilities: {', '.join(capabilities)}); use 32"
            )
    compiled = core.compile_model(path, "CPU", config)
    request = compiled.create_infer_request()

    def run(windows):
        request.infer({0: windows})
        return [request.get_output_tensor(0).data.copy()]

    return run
