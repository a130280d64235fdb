"""Embeddings of audio files: the work behind ``inference.py`` and ``match.py index``.

Each input file gives one ``.pt`` file holding its window embeddings, a float32 tensor (S, D)
(the original's output format). Windows: ``win_len`` seconds every ``hop_size`` seconds over the
whole file, the last one completed by the model's padding. Files are decoded in worker processes
while the model runs in the main process; outputs are written atomically, so an interrupted run
leaves only complete files and the next run skips them.

A folder of outputs carries ``inference.json``: the checkpoint, its digest and the window
settings the embeddings were made with. After a folder run, ``<path_out>/store/`` holds every
embedded file's windows as one embedding store (``lib/store.py``; tracks in input order, with
these settings), which ``match.py index`` reads as it is.
"""

import hashlib
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from lib import precision as precisions
from lib import retrieval, runtime, store
from lib.audio import AUDIO_EXTENSIONS, load_audio
from lib.checkpoint import check_takes_audio, load_trained_model
from lib.errors import UsageError
from lib.extract import Decoding, TrackFailed, file_digest, run_job, window_embeddings
from lib.files import LoadError, atomic_write, read_json
from lib.torch_files import atomic_torch_save, safe_torch_load

MANIFEST = "inference.json"
STORE_DIR = "store"  # under --path_out: the folder's embeddings as one embedding store
FAILURE_LOG = "inference_failures.log"
MANIFEST_VERSION = 1


class InferenceError(UsageError):
    """The run cannot start (bad arguments, colliding outputs, outputs of other settings)."""


def is_audio(path):
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def find_files(path_in):
    """(audio files, other files) under ``path_in``, recursively, sorted; hidden files and
    folders (names starting with '.') are not looked at."""
    audio, other = [], []
    for root, dirs, files in os.walk(path_in):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            (audio if is_audio(name) else other).append(path)
    return audio, other


def output_path(path, path_in, path_out):
    """``path_out/<path relative to path_in, extension replaced by .pt>``."""
    rel = os.path.relpath(path, path_in)
    return os.path.join(path_out, os.path.splitext(rel)[0] + ".pt")


def plan_folder(path_in, path_out):
    """[(input, output)] for every audio file of ``path_in`` and the non-audio files found.
    Inputs that would write the same output (``a.mp3`` and ``a.wav``) are an error listing all
    of them, raised before any work starts."""
    if not os.path.isdir(path_in):
        raise InferenceError(f"{path_in}: input folder not found")
    audio, other = find_files(path_in)
    jobs = [(path, output_path(path, path_in, path_out)) for path in audio]
    by_output = {}
    for src, dst in jobs:
        by_output.setdefault(dst, []).append(src)
    clashes = {dst: srcs for dst, srcs in by_output.items() if len(srcs) > 1}
    if clashes:
        lines = [f"  {dst} <- {', '.join(srcs)}" for dst, srcs in sorted(clashes.items())]
        raise InferenceError(
            f"{len(clashes)} output file(s) would be written by more than one input (files that "
            "differ only by extension); rename them or embed them separately:\n" + "\n".join(lines)
        )
    return jobs, other


def pick_device(name):
    """``auto`` = the GPU when there is one; an unavailable device is an ``InferenceError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError(f"--device {name}: no CUDA GPU is available (use --device cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InferenceError("--device mps: not available on this machine (use --device cpu)")
    return torch.device(name)


class TorchWindows(runtime.WindowModel):
    """The PyTorch model of a checkpoint as a ``runtime.WindowModel`` (``backend`` torch):
    ``extract.window_embeddings`` under the autocast of the Fabric ``precision``."""

    backend = "torch"

    def __init__(self, model, checkpoint, device, precision="32-true", digest=None):
        self.model, self.checkpoint = model, os.fspath(checkpoint)
        self.device, self.precision = device, precision
        self.samplerate, self.name = int(model.sr), type(model).__module__.split(".")[-1]
        self.segment_metric, self.default_redux = model.segment_metric, model.default_redux
        self.train_len = float(model.get_shingle_params()[0])
        self._digest = digest

    @property
    def digest(self):
        if self._digest is None:
            self._digest = file_digest(self.checkpoint)
        return self._digest

    def track_scores(self, query, z, mask, redux, metric):
        return retrieval.track_scores(query, z, mask, redux, metric)

    def window_embeddings(self, waveform, win_len, hop, max_windows=32):
        audio = torch.from_numpy(np.ascontiguousarray(waveform))
        with torch.inference_mode(), precisions.autocast(self.precision, self.device):
            z = window_embeddings(self.model, audio, win_len, hop, self.device, max_windows)
        return z.numpy()


def torch_windows(checkpoint, conf=None, device="auto", precision="32", digest=None):
    """The ``TorchWindows`` of a checkpoint (``conf``: its config YAML, by default beside it or
    inside it) on ``device`` (auto: the GPU when there is one) at ``precision``."""
    device = pick_device(device)
    mixed = precisions.check(precision, device, "precision")
    model, _, _ = load_trained_model(checkpoint, conf, device)
    check_takes_audio(model, checkpoint)
    return TorchWindows(model, checkpoint, device, mixed, digest)


def settings_of(engine, win_len, hop_size):
    """What the embeddings of the ``runtime.WindowModel`` ``engine`` depend on, as stored in
    ``inference.json``."""
    return {
        "backend": engine.backend,
        "precision": engine.precision,
        "version": MANIFEST_VERSION,
        "checkpoint": os.path.abspath(engine.checkpoint),
        "checkpoint_sha256": engine.digest,
        "model": engine.name,
        "samplerate": engine.samplerate,
        "win_len": float(win_len),
        "hop_size": float(hop_size),
        "metric": engine.segment_metric,
        "redux": engine.default_redux,
    }


SAME_SETTINGS_KEYS = (
    "checkpoint_sha256",
    "samplerate",
    "win_len",
    "hop_size",
    "backend",
    "precision",
)


def read_manifest(folder):
    """The settings in ``folder/inference.json`` (None when there is none)."""
    return read_json(os.path.join(folder, MANIFEST), InferenceError)


def check_manifest(folder, settings, overwrite):
    """Refuse to mix embeddings of other settings into ``folder`` (unless ``overwrite``)."""
    old = read_manifest(folder)
    if old is None or overwrite:
        return
    old = {**runtime.FORMER_SETTINGS, **old}
    changed = [k for k in SAME_SETTINGS_KEYS if old.get(k) != settings[k]]
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in changed)
        raise InferenceError(
            f"{folder} holds embeddings made with other settings ({detail}); use another output "
            "folder, or --overwrite to recompute every file"
        )


def write_manifest(folder, settings):
    text = json.dumps(settings, indent=2) + "\n"
    atomic_write(os.path.join(folder, MANIFEST), lambda handle: handle.write(text), text=True)


class DecodedFiles(Decoding):
    """The audio files ``paths`` at ``samplerate`` (items: their positions); silent ones are
    refused."""

    def __init__(self, paths, samplerate):
        super().__init__(range(len(paths)))
        self.paths, self.samplerate = paths, samplerate

    def decode(self, i):
        return load_audio(self.paths[i], self.samplerate, refuse_silence=True)

    def name(self, i):
        return self.paths[i]


def decoding_workers(nworkers, nfiles):
    """Worker processes to decode ``nfiles`` files: none for one file, whose decoding has no
    embedding to overlap with, and which a worker would hand over through a pipe at the cost of
    two more copies of the waveform (2 h at 16 kHz: 440 MiB each); at most one per file after
    the first."""
    return max(0, min(nworkers, nfiles - 1))


def embed_files(engine, jobs, win_len, hop_size, nworkers=2, overwrite=False):
    """Embed every (input, output) of ``jobs`` with the ``runtime.WindowModel`` ``engine``.
    Existing outputs are skipped unless ``overwrite``.

    Returns {"done": [...], "skipped": [...], "failed": [(input, reason), ...]}."""
    there = [not overwrite and os.path.isfile(dst) for _, dst in jobs]
    todo = [job for job, done in zip(jobs, there) if not done]
    skipped = [src for (src, _), done in zip(jobs, there) if done]
    summary = {"done": [], "skipped": skipped, "failed": []}
    if not todo:
        return summary
    seconds, start = 0.0, time.time()

    def keep(i, audio):
        nonlocal seconds
        src, dst = todo[i]
        try:
            z = engine.window_embeddings(audio.numpy(), win_len, hop_size)
            atomic_torch_save(torch.from_numpy(np.ascontiguousarray(z)), dst)
        except (RuntimeError, OSError) as err:
            raise TrackFailed(f"{src}: {type(err).__name__}: {err}") from err
        summary["done"].append(src)
        seconds += audio.numel() / engine.samplerate

    with tqdm(total=len(todo), desc="Extract embeddings", ncols=80, ascii=True) as bar:
        failed = run_job(
            DecodedFiles([src for src, _ in todo], engine.samplerate),
            keep,
            bar,
            decoding_workers(nworkers, len(todo)),
            report=lambda error: bar.write(f"  failed: {error}"),
        )
    summary["failed"] = [(todo[i][0], reason) for i, reason in failed]
    summary["audio_seconds"] = seconds
    summary["wall_seconds"] = time.time() - start
    return summary


def embed_into_folder(
    folder, engine, jobs, win_len, hop_size, nworkers=2, overwrite=False, extra_settings=None
):
    """``embed_files`` for outputs kept in ``folder`` under its ``inference.json``: outputs of
    other settings (another checkpoint, windows, backend or precision) are refused (unless
    ``overwrite``), these settings are recorded, failures logged in
    ``folder/inference_failures.log``. Returns the summary of ``embed_files``."""
    settings = settings_of(engine, win_len, hop_size)
    settings.update(extra_settings or {})
    check_manifest(folder, settings, overwrite)
    write_manifest(folder, settings)
    summary = embed_files(engine, jobs, win_len, hop_size, nworkers, overwrite)
    write_failure_log(os.path.join(folder, FAILURE_LOG), summary["failed"])
    failed = {src for src, _ in summary["failed"]}
    summary["tracks"] = [output_track(folder, src, dst) for src, dst in jobs if src not in failed]
    if summary["tracks"]:
        collect_store(folder, summary["tracks"], settings)
    return summary


def output_for_source(folder, source):
    """Where the embedding of ``source`` goes under ``folder`` (named by its absolute path, so
    files of any folders can be added side by side)."""
    digest = hashlib.sha1(os.path.abspath(source).encode("utf-8", "surrogateescape")).hexdigest()
    return os.path.join(folder, digest[:2], f"{digest}.pt")


def output_track(folder, src, dst):
    """The store's record of the output ``dst`` of ``src``: its id is the output's path under
    ``folder`` without the extension."""
    return {"id": os.path.splitext(os.path.relpath(dst, folder))[0], "source": src, "file": dst}


def read_output(path):
    """The (S, D) float32 array of an output file; ``store.StoreError`` naming it otherwise."""
    try:
        z = safe_torch_load(path, what="embedding file")
    except LoadError as err:
        raise store.StoreError(str(err)) from err
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise store.StoreError(f"{path}: expected a (windows, dim) tensor")
    return z.float().numpy()


def collect_store(folder, tracks, settings):
    """The outputs of ``tracks`` ([{"id", "source", "file"}]) as the embedding store
    ``folder/store``, with the run's settings; returns its folder."""
    return store.write_files(
        os.path.join(folder, STORE_DIR),
        [t["file"] for t in tracks],
        read_output,
        {"what": "inference.py outputs", "settings": settings, "tracks": tracks},
    )


def folder_store(folder):
    """The embedding store of an inference.py output folder (``<folder>/store``, or the folder
    itself); one is collected from its ``.pt`` files when an earlier version wrote none."""
    for candidate in (os.path.join(folder, STORE_DIR), folder):
        found = store.read(candidate)
        if found is not None:
            return found
    settings = read_manifest(folder)
    if settings is None:
        raise UsageError(f"{folder}: no {MANIFEST} (embeddings must come from inference.py)")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.endswith(".pt")
    )
    if not files:
        raise UsageError(f"{folder}: no .pt embedding files")
    tracks = [output_track(folder, f, f) for f in files]
    print(f"Collect {len(files)} embedding files of {folder} into {folder}/{STORE_DIR}")
    return store.read(collect_store(folder, tracks, settings))


def write_failure_log(path, failed):
    """One line per failed input ('path<TAB>reason'); an empty run removes an old log."""
    if not failed:
        if os.path.isfile(path):
            os.remove(path)
        return
    text = "".join(f"{src}\t{reason}\n" for src, reason in failed)
    atomic_write(path, lambda handle: handle.write(text), text=True)
