"""Export a trained model for ONNX Runtime and OpenVINO (``lib.runtime``: embedding without
PyTorch).

    python -m lib.export CHECKPOINT OUT_DIR [--conf CONF]

writes ``OUT_DIR/model.onnx`` (+ ``model.onnx.data``, the weights) and ``OUT_DIR/model.json``.
The graph takes windows (B, S, L) float32 samples at the model's rate and gives embeddings
(B, S, D): the front end (CQT and pooling, or the model's own) is inside it, batch B and window
count S are free, and so is the window length L unless the model embeds one length only
(``SegmentModel.fixed_window``). ``model.json`` holds what a runtime needs besides the graph:
sample rate, training window length and default hop, how windows are padded, embedding width,
segment distance, reduction, the checkpoint and its sha256 digest (what a catalogue records).

The CQT is exported compact (``lib.layers.CompactCqt``: each octave convolved over the samples
its kernels use, not over nnAudio's zero-padded 16,384; the same sums, a seventh of the work for
CLEWS). Before anything is written the export is run by ONNX Runtime on windows of two shapes
and compared with the PyTorch model as it was loaded (fp32): a relative difference (largest
absolute difference over the largest absolute embedding value) above ``TOLERANCE`` is an error.
Every model that ``inference.py`` takes exports (``tests/test_export.py``).
"""

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

from lib import cli, runtime
from lib.audio import AUDIO_EXTENSIONS, AudioError, load_audio
from lib.checkpoint import check_takes_audio, load_trained_model
from lib.errors import RunError, UsageError
from lib.layers import compact_cqts

OPSET = 18
TOLERANCE = 1e-5
INT8_WINDOWS = 64  # training-length windows the int8 model's activation ranges come from
DEFAULT_HOP = 5.0  # seconds: inference.py's and match.py's default window hop


class ExportFailed(RunError):
    """The model could not be exported, or its export does not give PyTorch's embeddings."""


class WindowGraph(nn.Module):
    """What is exported: windows (B, S, L) samples -> embeddings (B, S, D) float32."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, windows):
        nb, ns, length = windows.shape
        h = self.model.window_features(windows.reshape(nb * ns, length))
        z, _ = self.model.embed(h.reshape(nb, ns, h.shape[-2], h.shape[-1]))
        return z.float()


def window_samples(model, seconds):
    """Samples of a ``seconds`` window as the runtime gives it to the graph (grown to at least
    the training length)."""
    length, minimum = int(seconds * model.sr), int(model.minlen * model.sr)
    return length * max(1, -(-minimum // length))


def info_of(model, checkpoint, digest, opset):
    train_len = model.fixed_window or float(model.get_shingle_params()[0])
    return {
        "format": runtime.EXPORT_FORMAT,
        "model": type(model).__module__.split(".")[-1],
        "model_file": runtime.MODEL_FILE,
        "samplerate": int(model.sr),
        "win_len": float(train_len),
        "hop_size": DEFAULT_HOP,
        "min_len": float(model.minlen),
        "frame_pad": model.frame_pad,
        "min_pad": model.min_pad,
        "fixed_window": model.fixed_window is not None,
        "embedding_dim": int(model.embedding_dim),
        "segment_metric": model.segment_metric,
        "redux": model.default_redux,
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": digest,
        "input": "windows (batch, windows, samples) float32",
        "output": "embeddings (batch, windows, embedding_dim) float32",
        "opset": opset,
        "torch": torch.__version__,
    }


def relative_difference(got, want):
    """Largest absolute difference over the largest absolute value of ``want``."""
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def check_shapes(model, train_len):
    """The (B, S, L) shapes the export is checked on: two batch sizes and window counts, and a
    window 1.5 s longer where the length is free."""
    length = window_samples(model, train_len)
    shapes = [(1, 3, length), (2, 2, length)]
    if model.fixed_window is None:
        shapes[1] = (2, 2, window_samples(model, train_len + 1.5))
    return shapes


def torch_references(graph, shapes, seed=0):
    """[(random windows of each shape, PyTorch's embeddings of them)]: what the export must
    give, taken before ``compact_cqts`` changes how the graph computes its front end."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        windows = 0.1 * torch.randn(*shape, generator=generator)
        with torch.inference_mode():
            out.append((windows.numpy(), graph(windows).numpy()))
    return out


def compare_with_torch(path, references):
    """[(shape, relative difference)] of ONNX Runtime's embeddings against PyTorch's
    (``torch_references``)."""
    run = runtime.onnxruntime_session(path, "cpu", runtime.default_threads())
    return [
        (windows.shape, relative_difference(run(windows)[0], want))
        for windows, want in references
    ]


def export_graph(graph, sample, path, dynamic_length, opset):
    """``torch.onnx.export`` of ``graph`` to ``path`` (its weights in ``path``.data), batch and
    window count free, the window length free when ``dynamic_length``."""
    axes = {0: "batch", 1: "windows"}
    if dynamic_length:
        axes[2] = "samples"
    # the exporter reports each of its steps and every op it has no table for (torchvision's)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (sample,),
            path,
            dynamo=True,
            opset_version=opset,
            input_names=["windows"],
            output_names=["embeddings"],
            dynamic_axes={"windows": axes, "embeddings": {0: "batch", 1: "windows"}},
            external_data=True,
            verbose=False,
        )


def export(
    checkpoint,
    out_dir,
    conf=None,
    opset=OPSET,
    overwrite=False,
    say=print,
    int8_audio=None,
    int8_windows=INT8_WINDOWS,
    digest=None,
):
    """Export ``checkpoint`` (config ``conf``, else beside it or stored in it) into ``out_dir``,
    with an int8 model calibrated on the audio under ``int8_audio`` when given; returns the info
    written to ``model.json`` (with the checks' relative differences). ``digest``: the
    checkpoint's sha256 when known."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not runtime.is_export(out_dir):
        raise UsageError(f"{out_dir}: exists and is not an export; give a new or empty folder")
    if runtime.is_export(out_dir) and not overwrite:
        raise UsageError(f"{out_dir}: holds an export already (--overwrite replaces it)")
    model, _, _ = load_trained_model(checkpoint, conf, "cpu")
    check_takes_audio(model, checkpoint)
    info = info_of(model, checkpoint, digest or runtime.file_digest(checkpoint), opset)
    graph = WindowGraph(model).eval()
    references = torch_references(graph, check_shapes(model, info["win_len"]))
    # the model's own CQT multiplies its kernels' zero padding too (7x the work for CLEWS)
    info["compact_cqt"] = compact_cqts(model)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".export-", dir=parent)
    os.chmod(work, 0o755)  # mkdtemp makes it private; an export is read by others
    try:
        path = os.path.join(work, runtime.MODEL_FILE)
        say(f"Export {info['model']} ({sum(p.numel() for p in model.parameters()):,} parameters)")
        sample = torch.zeros(references[0][0].shape)
        try:
            export_graph(graph, sample, path, model.fixed_window is None, opset)
        except Exception as err:
            raise ExportFailed(f"{checkpoint}: the ONNX export failed: {err}") from err
        checks = compare_with_torch(path, references)
        for shape, diff in checks:
            say(f"  windows {tuple(shape)}: relative difference to PyTorch {diff:.2e}")
        worst = max(diff for _, diff in checks)
        if not worst < TOLERANCE:
            raise ExportFailed(
                f"{checkpoint}: the export's embeddings differ from PyTorch's by {worst:.2e} "
                f"(relative; at most {TOLERANCE:g} expected)"
            )
        info["checked"] = [{"shape": list(s), "relative_difference": d} for s, d in checks]
        if int8_audio is not None:
            info["int8"] = add_int8(work, model, int8_audio, int8_windows, say)
        with open(os.path.join(work, runtime.INFO_FILE), "w", encoding="utf-8") as handle:
            handle.write(json.dumps(info, indent=2) + "\n")
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work)
    say(f"Wrote {out_dir}/{runtime.MODEL_FILE} and {runtime.INFO_FILE}")
    return info


def calibration_windows(audio, model, count, seed=0):
    """(count, L) float32 windows of the model's training length from the audio files under
    the folder ``audio`` (as many from each file, spread over it, files in a seeded order):
    what the int8 model's activation ranges are measured on."""
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(audio)
        for name in names
        if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS and not name.startswith(".")
    )
    if not files:
        raise UsageError(f"--int8 {audio}: no audio files to calibrate the int8 model on")
    order = np.random.default_rng(seed).permutation(len(files))
    per_file = max(1, -(-count // len(files)))
    length = window_samples(model, model.fixed_window or model.get_shingle_params()[0])
    found = []
    for i in order:
        try:
            waveform = load_audio(files[i], int(model.sr))
        except AudioError:
            continue  # a calibration set needs good audio only; others are plenty
        hop = max(1, (waveform.size - length) // per_file) if waveform.size > length else length
        windows = runtime.frame(waveform, length, hop, model.frame_pad, length, model.min_pad)
        found.extend(windows[:per_file, :length])
        if len(found) >= count:
            break
    if not found:
        raise UsageError(f"--int8 {audio}: no readable audio to calibrate the int8 model on")
    return np.stack(found[:count])


def quantize_int8(fp32_path, int8_path, windows):
    """ONNX Runtime's static int8 quantization of the export at ``fp32_path`` into
    ``int8_path``: int8 weights per output channel, uint8 activations whose ranges are measured
    on ``windows`` (N, L), as QDQ pairs (which ONNX Runtime and OpenVINO both run in int8). The
    CQT's kernels stay fp32: its output is log-compressed, where int8 steps would show."""
    import onnx
    from onnxruntime import quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX Runtime's pre-processing first (folding and fusions, e.g. batch norms into
    # convolutions): what it quantizes then runs 1.4x faster
    prepared = int8_path + ".prepared.onnx"
    quant_pre_process(
        fp32_path,
        prepared,
        skip_symbolic_shape=True,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        external_data_location=os.path.basename(prepared) + ".data",
    )
    graph = onnx.load(prepared, load_external_data=False).graph
    front_end = [
        node.name
        for node in graph.node
        if node.op_type == "Conv" and any("cqt" in name for name in node.input)
    ]

    class Windows(quantization.CalibrationDataReader):
        def __init__(self):
            self.left = iter(windows)

        def get_next(self):
            window = next(self.left, None)
            return None if window is None else {"windows": window[None, None]}

    quantization.quantize_static(
        prepared,
        int8_path,
        Windows(),
        quant_format=quantization.QuantFormat.QDQ,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        nodes_to_exclude=front_end,
        use_external_data_format=True,
    )
    for leftover in (prepared, prepared + ".data"):
        os.remove(leftover)
    for name in os.listdir(os.path.dirname(int8_path)):  # the quantizer writes them private
        os.chmod(os.path.join(os.path.dirname(int8_path), name), 0o644)


def add_int8(work, model, audio, count, say=print):
    """The int8 model of the export in ``work`` (``runtime.INT8_FILE``), calibrated on ``count``
    windows of the audio under ``audio``; returns what ``model.json`` records of it (with the
    relative difference of its embeddings to fp32 on those windows)."""
    windows = calibration_windows(audio, model, count)
    say(f"  int8: calibrating on {len(windows)} windows from {audio}")
    fp32_path = os.path.join(work, runtime.MODEL_FILE)
    int8_path = os.path.join(work, runtime.INT8_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_int8(fp32_path, int8_path, windows)
    threads = runtime.default_threads()
    full = runtime.onnxruntime_session(fp32_path, "cpu", threads)
    eight = runtime.onnxruntime_session(int8_path, "cpu", threads)
    batch = windows[None, : min(len(windows), 16)]
    want, got = full(batch)[0], eight(batch)[0]
    diff = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))
    say(f"  int8: embeddings differ from fp32 by {diff:.2e} (relative) on those windows")
    return {
        "model_file": runtime.INT8_FILE,
        "calibration": {"audio": os.path.abspath(audio), "windows": int(len(windows))},
        "relative_difference": diff,
    }


def exported(checkpoint, conf=None, say=print, digest=None):
    """The export folder of ``checkpoint``: ``checkpoint`` itself when it is one, else the
    export kept beside it (``runtime.export_folder_for``; made first when missing or of other
    weights). ``digest``: the checkpoint's sha256 when known; hashed once otherwise."""
    if runtime.is_export(checkpoint):
        return checkpoint
    if not os.path.isfile(checkpoint):
        raise UsageError(f"{checkpoint}: checkpoint not found")
    digest = digest or runtime.file_digest(checkpoint)
    found = runtime.export_beside(checkpoint, digest)
    if found is not None:
        return found
    folder = runtime.export_folder_for(checkpoint, digest)
    export(checkpoint, folder, conf, overwrite=True, say=say, digest=digest)
    return folder


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Export a trained model as ONNX for ONNX Runtime and OpenVINO."
    )
    parser.add_argument("checkpoint", help="checkpoint file (.ckpt or .pt)")
    parser.add_argument("out_dir", help="folder to write model.onnx and model.json into")
    parser.add_argument("--conf", default=None, help="config YAML (default: beside or inside)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    parser.add_argument(
        "--int8",
        default=None,
        metavar="AUDIO",
        help="also an int8 model (--precision int8), calibrated on music from this folder",
    )
    parser.add_argument(
        "--int8_windows",
        type=int,
        default=INT8_WINDOWS,
        help=f"windows of that music measured (default {INT8_WINDOWS})",
    )
    args = parser.parse_args(argv)
    if args.int8_windows < 1:
        parser.error("--int8_windows must be >= 1")
    return args


def command(argv):
    args = parse_args(argv)
    export(
        args.checkpoint,
        args.out_dir,
        args.conf,
        args.opset,
        args.overwrite,
        int8_audio=args.int8,
        int8_windows=args.int8_windows,
    )
    return 0


def main(argv=None):
    return cli.run(command, argv)


if __name__ == "__main__":
    sys.exit(main())
