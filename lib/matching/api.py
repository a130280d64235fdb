"""The Python API: what ``inference.py`` and ``match.py`` do, as two objects.

    from lib.matching.api import Embedder, Catalogue

    model = Embedder.load("runs/demo/runs/demo-clews/checkpoint_last.ckpt")  # or an original one
    z = model.embed("song.mp3")                      # (windows, dim) float32, 10 s every 5 s
    z = model.embed(samples, samplerate=44100)       # a mono array works too
    cat, failed = Catalogue.build("cat/", model, "music/")   # or Catalogue.open("cat/")
    cat.add(["new/song.mp3"])                        # appended, no rebuild
    cat.calibrate("data/meta.pt", "data/audio", partition="valid")  # "no version" threshold
    result = cat.query("clip.wav")
    print(result.verdict)                            # "version found", "no version found", ...
    for m in result.matches:
        print(m.id, m.distance, m.is_version, m.clip_s, m.track_s)

Every failure is an exception of this project (``lib.errors``: ``UsageError`` for bad
arguments, ``RunError`` subclasses such as ``AudioError`` and ``CatalogueError`` naming the file
and the problem).

Without PyTorch (``requirements-runtime.txt``): an exported model (``python -m lib.export``) on
``backend="onnxruntime"`` or ``"openvino"`` embeds clips, opens catalogues, queries and compares
them; what runs the PyTorch model or its embedding job over files (the torch backend, building,
adding, calibrating, MIREX) imports those modules when called (``torch_parts``).
"""

import os
import types
from dataclasses import dataclass, field

import numpy as np
import soxr

from lib import reductions, runtime, store
from lib.audio import load_audio
from lib.errors import UsageError
from lib.files import atomic_write
from lib.matching import calibration, catalogue, picture


def torch_parts():
    """The PyTorch side, imported when first needed (see the module's doc): the namespace of
    ``torch``, ``lib.export``, ``lib.retrieval`` and ``lib.matching.inference``."""
    import torch

    from lib import export, retrieval
    from lib.matching import inference

    return types.SimpleNamespace(
        torch=torch, export=export, retrieval=retrieval, inference=inference
    )


ADDED_DIR = "added"  # under a catalogue: embeddings of added audio (a stopped add resumes)
DEFAULT_HOP = 5.0


###################################################################################################
# Embedding audio
###################################################################################################


class Embedder:
    """A trained model ready to embed audio: ``Embedder.load(checkpoint)``. ``engine``: the
    ``lib.runtime.WindowModel`` that runs it (PyTorch, or an export on ONNX Runtime / OpenVINO)."""

    def __init__(self, engine):
        self.engine = engine

    @classmethod
    def load(
        cls, checkpoint, conf=None, device="auto", precision="32", digest=None, backend="torch"
    ):
        """A checkpoint of this project or of the original code (``conf``: a config YAML, by
        default the one beside the checkpoint or inside it), or a folder of ``lib.export``;
        ``device`` auto, cpu, cuda[:N] or mps; ``precision`` 32, bf16 or 16; ``backend`` torch,
        onnxruntime or openvino (these two run the checkpoint's export, made beside it when
        missing: ``lib.export.exported``); ``digest``: the checkpoint's sha256 when known."""
        if backend not in runtime.BACKENDS:
            raise UsageError(f"backend {backend!r}: one of {', '.join(runtime.BACKENDS)}")
        checkpoint = os.fspath(checkpoint)
        if backend != "torch":
            if not runtime.is_export(checkpoint):  # its export; made first (with PyTorch)
                if os.path.isfile(checkpoint):
                    digest = digest or runtime.file_digest(checkpoint)
                found = runtime.export_beside(checkpoint, digest)
                checkpoint = found or torch_parts().export.exported(checkpoint, conf, digest=digest)
            return cls(runtime.ExportedModel(checkpoint, backend, precision, device))
        if runtime.is_export(checkpoint):
            raise UsageError(
                f"{checkpoint}: an exported model runs on --backend onnxruntime or openvino; "
                "the torch backend needs the checkpoint"
            )
        if str(precision) == "int8":
            raise UsageError(
                "precision int8 is an export's int8 model: --backend onnxruntime or openvino"
            )
        inference = torch_parts().inference
        return cls(inference.torch_windows(checkpoint, conf, device, precision, digest))

    @property
    def checkpoint(self):
        return self.engine.checkpoint

    @property
    def device(self):
        return self.engine.device

    @property
    def backend(self):
        return self.engine.backend

    @property
    def precision(self):
        return self.engine.precision

    @property
    def samplerate(self):
        return self.engine.samplerate

    @property
    def name(self):
        return self.engine.name

    @property
    def digest(self):
        """sha256 of the checkpoint file (what a catalogue records of its model)."""
        return self.engine.digest

    def window_length(self, win_len=None):
        """Seconds per window: ``win_len``, or the model's training length (None or <= 0)."""
        return self.engine.window_length(win_len)

    def embed(self, audio, samplerate=None, win_len=None, hop=DEFAULT_HOP):
        """(windows, dim) float32 embeddings of windows of ``win_len`` s (default: the model's
        training length) every ``hop`` s. ``audio``: a file path, or a mono waveform (T,) at
        ``samplerate`` Hz (resampled to the model's rate when it differs)."""
        waveform = self.waveform(audio, samplerate)
        return self.embed_waveform(waveform, self.window_length(win_len), hop)

    def waveform(self, audio, samplerate=None):
        """(T,) float32 numpy waveform at the model's rate from a path or an array."""
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(os.fspath(audio), self.samplerate, refuse_silence=True)
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise UsageError(f"audio array must be mono (T,), got shape {x.shape}")
        if samplerate is None:
            raise UsageError("an audio array needs its samplerate")
        if not np.isfinite(x).all():
            raise UsageError("audio array holds NaN or infinite values")
        if int(samplerate) != self.samplerate:
            x = soxr.resample(x, int(samplerate), self.samplerate).astype(np.float32)
        if x.size == 0:
            raise UsageError("audio array is empty")
        return x

    def embed_waveform(self, waveform, win_len, hop):
        """(S, D) float32 numpy embeddings of a waveform (T,) at the model's rate."""
        return self.engine.window_embeddings(np.ascontiguousarray(waveform), win_len, hop)

    def embed_folder_into(
        self, folder, jobs, win_len, hop, nworkers=2, extra_settings=None, overwrite=False
    ):
        """``inference.py``'s folder mode: every (input, output) of ``jobs`` into ``folder``
        (resumable, checked against the settings recorded there, unless ``overwrite``
        recomputes them); returns its summary."""
        return torch_parts().inference.embed_into_folder(
            folder, self.engine, jobs, win_len, hop, nworkers, overwrite, extra_settings
        )


CATALOGUE_SETTINGS = (
    "backend",
    "precision",
    "checkpoint",
    "checkpoint_sha256",
    "model",
    "samplerate",
    "win_len",
    "hop_size",
    "metric",
    "redux",
)


###################################################################################################
# Query results
###################################################################################################


@dataclass
class Match:
    rank: int
    row: int  # the track's row in the catalogue
    id: str
    source: str  # the audio file the track was embedded from (None if unknown)
    distance: float  # track distance (the model's reduction); smaller is closer
    clip_s: tuple  # (start, end) seconds of the clip that match ...
    track_s: tuple  # ... (start, end) seconds of the track
    is_version: bool = None  # within the threshold; None without one
    false_alarm: float = None  # chance a clip with no version has a match this close
    pairs: list = field(default_factory=list)  # closest window pairs (clip s, track s, distance)

    def as_dict(self):
        return {
            "rank": self.rank,
            "row": self.row,
            "id": self.id,
            "source": self.source,
            "distance": self.distance,
            "version": self.is_version,
            "false_alarm": self.false_alarm,
            "clip_s": list(self.clip_s),
            "track_s": list(self.track_s),
            "pairs": self.pairs,
        }


@dataclass
class QueryResult:
    duration_s: float
    windows: int
    matches: list
    threshold: float = None  # distance at or below which a match is a version; None: none set
    threshold_source: str = None  # "calibrated" or "max_distance"

    @property
    def found(self):
        """True / False when a threshold decides; None without one."""
        if self.threshold is None:
            return None
        return bool(self.matches) and self.matches[0].is_version

    @property
    def verdict(self):
        if self.found is None:
            return "not calibrated (no 'no version' decision: run match.py calibrate)"
        if self.found:
            return "version found"
        return "no version found"

    def as_dict(self):
        return {
            "duration_s": self.duration_s,
            "windows": self.windows,
            "verdict": self.verdict,
            "found": self.found,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "matches": [m.as_dict() for m in self.matches],
        }


###################################################################################################
# The catalogue
###################################################################################################


class Catalogue:
    """A catalogue folder (``lib/matching/catalogue.py``) with the model that made it."""

    def __init__(self, folder, embedder=None, device="auto", precision="32", backend="torch"):
        """Open ``folder``; the model is the catalogue's checkpoint (loaded when first needed,
        on ``backend`` at ``precision``; adding audio needs the ones the catalogue was made
        with) unless ``embedder`` is given, which must be that same checkpoint."""
        self.folder = os.fspath(folder)
        self._data = catalogue.load(self.folder)
        self._stamp = self._meta_stamp()
        self._device, self._precision, self._backend = device, precision, backend
        self._embedder = None
        self._decision = None
        if embedder is not None:
            self.use_embedder(embedder)

    @classmethod
    def open(cls, folder, embedder=None, device="auto", precision="32", backend="torch"):
        return cls(folder, embedder, device, precision, backend)

    @classmethod
    def build(
        cls,
        folder,
        embedder,
        audio,
        hop=DEFAULT_HOP,
        win_len=None,
        index="auto",
        nlist=None,
        nworkers=2,
        overwrite=False,
    ):
        """A catalogue in ``folder`` of every audio file under the folder ``audio`` (their
        embeddings kept in ``folder/embeddings``: an interrupted build resumes; ``overwrite``
        recomputes them). Returns (catalogue, [(file, reason)] of the files that could not be
        read)."""
        work = os.path.join(folder, "embeddings")
        inference = torch_parts().inference
        jobs, other = inference.plan_folder(os.fspath(audio), work)
        if other:
            print(f"  {len(other)} file(s) without an audio extension left out, e.g. {other[0]}")
        win_len = embedder.window_length(win_len)
        extra = {"path_in": os.path.abspath(audio)}
        summary = embedder.embed_folder_into(work, jobs, win_len, hop, nworkers, extra, overwrite)
        if not summary["tracks"]:
            raise catalogue.CatalogueError(f"{audio}: no track could be embedded; nothing to index")
        index_store(folder, store.read(os.path.join(work, inference.STORE_DIR)), index, nlist)
        return cls(folder, embedder), summary["failed"]

    @classmethod
    def from_embeddings(cls, folder, embeddings, index="auto", nlist=None):
        """A catalogue in ``folder`` of the outputs of ``inference.py`` in the folder
        ``embeddings`` (its embedding store; collected first from its ``.pt`` files when an
        earlier version wrote none); ``index``, ``nlist``: the FAISS index."""
        found = torch_parts().inference.folder_store(os.fspath(embeddings))
        windows = int((~found.mask).sum())
        print(f"Index {len(found.manifest['tracks'])} tracks, {windows} windows...")
        index_store(folder, found, index, nlist)
        return cls(folder)

    # ---------------------------------------------------------------------------------------

    @property
    def data(self):
        """The loaded ``catalogue.CatalogueState`` (arrays, index, tracks, settings)."""
        return self._data

    @property
    def settings(self):
        return self._data.settings

    @property
    def tracks(self):
        return self._data.tracks

    def __len__(self):
        return len(self._data.tracks)

    def _meta_stamp(self):
        try:
            status = os.stat(os.path.join(self.folder, catalogue.META_FILE))
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size, status.st_ino

    def refresh(self):
        """Reload when another process published a new state (an add, a calibration); returns
        True when it did."""
        stamp = self._meta_stamp()
        if stamp == self._stamp:
            return False
        self._data = catalogue.load(self.folder)
        self._stamp = stamp
        self._decision = None
        return True

    @property
    def embedder(self):
        if self._embedder is None:
            self.load_embedder()
        return self._embedder

    @property
    def made_with(self):
        """(backend, precision) that made the catalogue's embeddings (a catalogue written
        before they were recorded: torch, 32-true)."""
        recorded = {**runtime.FORMER_SETTINGS, **self.settings}
        return recorded["backend"], recorded["precision"]

    def load_embedder(self, checkpoint=None, conf=None):
        """Load the model from ``checkpoint`` (default: the catalogue's own; or its export),
        which must be the file the catalogue was built with (checked before loading); returns
        it."""
        checkpoint = os.fspath(checkpoint or self.settings["checkpoint"])
        if runtime.is_export(checkpoint):
            digest = runtime.read_info(checkpoint)["checkpoint_sha256"]
        elif os.path.isfile(checkpoint):
            digest = runtime.file_digest(checkpoint)
        else:
            raise UsageError(
                f"{checkpoint}: checkpoint of the catalogue not found (give where it is now: "
                "--checkpoint, or load_embedder(path))"
            )
        if digest != self.settings["checkpoint_sha256"]:
            raise UsageError(f"{checkpoint}: not the checkpoint the catalogue was built with")
        embedder = Embedder.load(
            checkpoint, conf, self._device, self._precision, digest, self._backend
        )
        self._embedder = embedder
        return embedder

    def use_embedder(self, embedder):
        if embedder.digest != self.settings["checkpoint_sha256"]:
            raise UsageError(
                f"{embedder.checkpoint}: not the checkpoint the catalogue was built with"
            )
        self._embedder = embedder

    def check_same_embeddings(self, embedder):
        """A ``UsageError`` when ``embedder`` runs on another backend or precision than the one
        that made the catalogue: their windows would sit in one index side by side."""
        made = self.made_with
        if (embedder.backend, embedder.precision) != made:
            raise UsageError(
                f"{self.folder}: made with backend {made[0]} at precision {made[1]}; adding "
                f"with backend {embedder.backend} at precision {embedder.precision} would mix "
                f"embeddings (use --backend {made[0]} --precision {made[1]})"
            )

    @property
    def decision(self):
        """The calibrated decision (``calibration.Decision``) for the catalogue's size now,
        or None when it is not calibrated (or was, for other settings)."""
        if self._decision is None or self._decision.size != len(self):
            self._decision = self.decision_for(len(self))
        return self._decision

    def decision_for(self, size):
        """The calibrated decision for ``size`` candidates (the false-alarm rate of that many
        chances of a close non-version), or None when the catalogue is not calibrated (or was,
        for other settings)."""
        measured = self._data.calibration
        if not catalogue.calibration_applies(measured, self.settings):
            return None
        return calibration.Decision(measured, self.folder, size)

    def describe(self):
        """Lines about the catalogue: size, windows, index, calibration."""
        data = self._data
        lines = [
            f"{len(self)} tracks, {data.index.ntotal} windows of {self.settings['win_len']:g} s "
            f"every {self.settings['hop_size']:g} s, index {data.info.get('kind')}, model "
            f"{self.settings['model']} ({os.path.basename(self.settings['checkpoint'])})"
        ]
        decision = self.decision
        if decision is None:
            lines.append("not calibrated: 'match.py calibrate' sets the 'no version' threshold")
        else:
            lines += calibration.summary(data.calibration, decision)
        return lines

    # ---------------------------------------------------------------------------------------

    def query(
        self,
        clip,
        samplerate=None,
        topk=10,
        hop=None,
        redux=None,
        exact=False,
        neighbours=256,
        shortlist=100,
        nprobe=16,
        max_distance=None,
    ):
        """The ``topk`` closest tracks to ``clip`` (a path, or a mono array at ``samplerate``)
        as a ``QueryResult``. Whether a match is a version: within ``max_distance`` when given,
        else within the calibrated threshold (no decision when the catalogue is uncalibrated)."""
        embedder = self.embedder
        waveform = embedder.waveform(clip, samplerate)
        duration = waveform.size / embedder.samplerate
        win_len = float(self.settings["win_len"])
        hop = float(hop) if hop else float(self.settings["hop_size"])
        windows = embedder.embed_waveform(waveform, win_len, hop)
        found = catalogue.search(
            self._data,
            windows,
            topk,
            redux,
            exact,
            neighbours,
            shortlist,
            nprobe,
            clip_hop=hop,
            scores=embedder.engine.track_scores,
        )
        decision = None if max_distance is not None else self.decision
        threshold = max_distance
        if decision is not None:
            threshold = decision.threshold
        matches = []
        for rank, m in enumerate(found, 1):
            track = self.tracks[m.row]
            clip_s, track_s = catalogue.aligned_ranges(m.offset, duration)
            pairs = [
                {
                    "clip_s": [i * hop, min(i * hop + win_len, duration)],
                    "track_s": list(self._data.window_seconds(j)),
                    "distance": d,
                }
                for i, j, d in m.pairs
            ]
            matches.append(
                Match(
                    rank,
                    m.row,
                    track["id"],
                    track.get("source"),
                    m.distance,
                    clip_s,
                    track_s,
                    None if threshold is None else m.distance <= threshold,
                    None if decision is None else decision.false_alarm(m.distance),
                    pairs,
                )
            )
        if max_distance is not None:
            source = "max_distance"
        else:
            source = None if decision is None else "calibrated"
        return QueryResult(duration, len(windows), matches, threshold, source)

    def compare(self, a, b, samplerate=None, redux=None, threshold=None):
        """``compare`` two recordings with the catalogue's model, windows, hop and reduction;
        without ``threshold``, the verdict is the calibrated one for a single comparison (the
        false-alarm rate of one candidate, not of the whole catalogue)."""
        settings = self.settings
        result = compare(
            self.embedder,
            a,
            b,
            samplerate,
            float(settings["win_len"]),
            float(settings["hop_size"]),
            redux or settings["redux"],
            threshold,
        )
        return self._decided(result, threshold)

    def compare_track(self, windows, duration, row, redux=None, threshold=None):
        """The ``Comparison`` of a clip's window embeddings ``windows`` (S, D; the catalogue's
        windows and hop) of ``duration`` s with catalogue track ``row``, from the windows the
        catalogue holds (no audio decoded): the picture of a query's match."""
        settings, data = self.settings, self._data
        if not 0 <= row < len(self):
            raise UsageError(f"row {row}: the catalogue has {len(self)} tracks")
        valid = ~data.mask[row]
        track = np.asarray(data.z[row][valid], dtype=np.float32)
        # the track's length as its windows cover it (its last window may run past its end)
        covered = data.window_seconds(int(valid.sum()) - 1)[1]
        result = comparison(
            windows,
            track,
            (duration, covered),
            settings["metric"],
            redux or settings["redux"],
            float(settings["win_len"]),
            float(settings["hop_size"]),
            threshold,
        )
        return self._decided(result, threshold)

    def _decided(self, result, threshold):
        """``result`` with the calibrated threshold of one comparison unless ``threshold``."""
        single = None if threshold is not None else self.decision_for(1)
        if single is not None:
            result.threshold, result.threshold_source = single.threshold, "calibrated"
        return result

    # ---------------------------------------------------------------------------------------

    def add(self, audio, ids=None, nworkers=2):
        """Embed and append audio files (a list of paths, or a folder: every audio file under
        it) without rebuilding. Ids: ``ids`` if given, else the path under the folder (or the
        file name) without extension. Files already in the catalogue (same id and source) are
        left out. Returns {"added": [ids], "already": [ids], "failed": [(file, reason)]}."""
        planned = self._plan_add(audio, ids)
        already = [t["id"] for t in planned if t.get("already")]
        todo = [t for t in planned if not t.get("already")]
        out = {"added": [], "already": already, "failed": []}
        if not todo:
            return out
        embedder = self.embedder
        self.check_same_embeddings(embedder)
        work = os.path.join(self.folder, ADDED_DIR)
        win_len, hop = float(self.settings["win_len"]), float(self.settings["hop_size"])
        inference = torch_parts().inference
        jobs = [(t["source"], inference.output_for_source(work, t["source"])) for t in todo]
        summary = embedder.embed_folder_into(work, jobs, win_len, hop, nworkers)
        out["failed"] = summary["failed"]
        failed = {src for src, _ in summary["failed"]}
        good = [(t, dst) for t, (_, dst) in zip(todo, jobs) if t["source"] not in failed]
        if good:
            tracks = [{"id": t["id"], "source": t["source"]} for t, _ in good]
            embeddings = [inference.read_output(dst) for _, dst in good]
            self._data = catalogue.append(self.folder, tracks, embeddings)
            self._stamp = self._meta_stamp()
            self._decision = None
            out["added"] = [t["id"] for t in tracks]
        return out

    def _plan_add(self, audio, ids):
        """[{"id", "source", "already"?}] for the files to add; clashing ids are an error."""
        if isinstance(audio, (str, os.PathLike)) and os.path.isdir(audio):
            root = os.fspath(audio)
            files, _ = torch_parts().inference.find_files(root)
            names = [os.path.splitext(os.path.relpath(f, root))[0] for f in files]
        else:
            single = isinstance(audio, (str, os.PathLike))
            files = [os.fspath(a) for a in ([audio] if single else audio)]
            names = [os.path.splitext(os.path.basename(f))[0] for f in files]
        if ids is not None:
            names = list(ids)
            if len(names) != len(files):
                raise UsageError(f"{len(names)} ids for {len(files)} files")
        if not files:
            raise UsageError(f"{audio}: no audio file to add")
        folders = [f for f in files if os.path.isdir(f)]
        if folders:
            raise UsageError(f"{folders[0]}: a folder among files; give one folder, or files")
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise UsageError(f"file(s) not found: {', '.join(missing[:5])}")
        existing = {t["id"]: t.get("source") for t in self.tracks}
        planned, clashes, seen = [], [], set()
        for name, path in zip(names, files):
            source = os.path.abspath(path)
            if name in existing:
                if existing[name] == source:
                    planned.append({"id": name, "source": source, "already": True})
                else:
                    clashes.append(f"{name} ({path}; the catalogue's is {existing[name]})")
                continue
            if name in seen:
                clashes.append(f"{name} ({path}; given twice)")
                continue
            seen.add(name)
            planned.append({"id": name, "source": source})
        if clashes:
            raise UsageError(
                "track ids already in the catalogue for other files (give other ids, or add "
                "from a folder so that ids include subfolders): " + "; ".join(clashes[:5])
            )
        return planned

    # ---------------------------------------------------------------------------------------

    def calibrate(self, meta, audio_root, partition="valid", plot=None, **options):
        """Measure and store the "no version" threshold on the labelled ``partition`` of the
        metadata file ``meta`` (audio under ``audio_root``), the plot of the measurements in
        ``plot`` if given; ``options``: target, clip_len, clips_per_track, seed, nworkers of
        ``calibration.calibrate``. Returns (decision for the catalogue now, [(file, reason)] of
        unreadable files, which are left out)."""
        failed = calibration.calibrate(
            self._data, self.embedder, meta, audio_root, partition, plot_path=plot, **options
        )
        self.refresh()
        return self.decision, failed


def index_store(folder, embeddings, kind="auto", nlist=None):
    """A catalogue in ``folder`` of an embedding store of ``inference.py``'s kind (its tracks and
    the settings it records); ``kind``, ``nlist``: the FAISS index (``lib.matching.catalogue``)."""
    manifest = embeddings.manifest
    recorded = {**runtime.FORMER_SETTINGS, **manifest["settings"]}
    settings = {k: recorded[k] for k in CATALOGUE_SETTINGS}
    return catalogue.build(folder, manifest["tracks"], embeddings, settings, kind, nlist)


###################################################################################################
# Two recordings
###################################################################################################


@dataclass
class Comparison:
    """Whether two recordings A and B are versions of one work, and where they meet."""

    distance: float  # track distance (the model's reduction); smaller is closer
    a_s: tuple  # (start, end) seconds of A that line up ...
    b_s: tuple  # ... with this range of B (the best alignment of A's windows on B's)
    pairs: list  # closest window pairs {"a_s", "b_s", "distance"}, closest first
    durations: tuple  # (A, B) seconds
    threshold: float = None  # distance at or below which they are versions; None: none given
    threshold_source: str = None  # "threshold" (given) or "calibrated" (a catalogue's)
    # (Sa, Sb) distances between every window of A and every window of B (``picture``)
    segments: np.ndarray = field(default=None, repr=False)
    win_len: float = None  # seconds per window
    hop: float = None  # seconds between windows (A's and B's)

    @property
    def is_version(self):
        return None if self.threshold is None else bool(self.distance <= self.threshold)

    @property
    def verdict(self):
        if self.is_version is None:
            return "no decision (give a threshold, or a calibrated catalogue)"
        return "versions" if self.is_version else "not versions"

    def as_dict(self):
        return {
            "distance": self.distance,
            "verdict": self.verdict,
            "version": self.is_version,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "a_s": list(self.a_s),
            "b_s": list(self.b_s),
            "durations_s": list(self.durations),
            "pairs": self.pairs,
        }

    def picture(self, names=("A", "B")):
        """PNG bytes: the window-distance matrix with where A and B meet (``picture.png``)."""
        return picture.comparison_png(self, names)


def compare(
    embedder, a, b, samplerate=None, win_len=None, hop=DEFAULT_HOP, redux=None, threshold=None
):
    """Compare the recordings ``a`` and ``b`` (paths, or mono arrays at ``samplerate``):
    their windows of ``win_len`` s (default: the model's training length) every ``hop`` s,
    the track distance with the reduction ``redux`` (default: the model's), where A's windows
    line up best on B's (as a catalogue query places a clip), the closest window pairs, and
    the verdict at ``threshold`` if given. Returns a ``Comparison``."""
    length = embedder.window_length(win_len)
    waveforms = [embedder.waveform(x, samplerate) for x in (a, b)]
    durations = tuple(w.size / embedder.samplerate for w in waveforms)
    za, zb = (embedder.embed_waveform(w, length, hop) for w in waveforms)
    engine = embedder.engine
    redux = redux or engine.default_redux
    return comparison(za, zb, durations, engine.segment_metric, redux, length, hop, threshold)


def comparison(za, zb, durations, metric, redux, win_len, hop, threshold=None):
    """The ``Comparison`` of the window embeddings ``za`` (Sa, D) and ``zb`` (Sb, D) of two
    recordings of ``durations`` s, windows of ``win_len`` s every ``hop`` s."""
    seg = reductions.segment_distances(za, zb, metric)
    distance = float(reductions.distance_redux(seg[None, None], redux)[0, 0])
    windows_b = np.arange(seg.shape[1])
    offset = catalogue.best_offset(seg, windows_b, hop, hop)
    start_a, start_b = max(0.0, -offset), max(0.0, offset)
    overlap = max(0.0, min(durations[0] - start_a, durations[1] - start_b))

    def window_s(i, duration):
        return [i * hop, min(i * hop + win_len, duration)]

    pairs = [
        {"a_s": window_s(i, durations[0]), "b_s": window_s(j, durations[1]), "distance": d}
        for i, j, d in catalogue.closest_pairs(seg, windows_b, 5)
    ]
    return Comparison(
        distance,
        (start_a, start_a + overlap),
        (start_b, start_b + overlap),
        pairs,
        durations,
        threshold,
        None if threshold is None else "threshold",
        seg,
        win_len,
        hop,
    )


###################################################################################################
# MIREX
###################################################################################################


def mirex_distances(
    embedder,
    collection,
    queries,
    out,
    name,
    workdir=None,
    win_len=None,
    hop=DEFAULT_HOP,
    redux=None,
    nworkers=2,
    overwrite=False,
):
    """The MIREX cover-song task's distance matrix: every file of the list ``collection`` (one
    path a line) embedded (into ``workdir``, default ``<out>.embeddings``: a stopped run
    resumes), the files of the list ``queries`` (a subset) against all of them with the
    reduction ``redux`` (default: the model's), written to ``out`` in MIREX's text format under
    the submission ``name``. Nothing is written unless every collection file was embedded.
    Returns {"failed": [(file, reason)], "queries", "collection", "redux"}."""
    listed = catalogue.read_file_list(collection)
    asked = catalogue.read_file_list(queries)
    try:
        rows = catalogue.collection_rows(listed, asked)
    except catalogue.CatalogueError as err:
        raise UsageError(f"{queries}: {err}") from err
    parts = torch_parts()
    work = workdir or os.fspath(out) + ".embeddings"
    jobs = [(path, os.path.join(work, f"{i + 1:06d}.pt")) for i, path in enumerate(listed)]
    length = embedder.window_length(win_len)
    summary = embedder.embed_folder_into(work, jobs, length, hop, nworkers, overwrite=overwrite)
    engine = embedder.engine
    redux = redux or engine.default_redux
    done = {"failed": summary["failed"], "queries": len(rows), "collection": len(listed)}
    done["redux"] = redux
    if summary["failed"]:
        return done
    torch, retrieval = parts.torch, parts.retrieval
    embedded = store.read(os.path.join(work, parts.inference.STORE_DIR))  # the collection
    ids = torch.arange(len(listed))
    z, mask = torch.from_numpy(embedded.z), torch.from_numpy(embedded.mask)
    tracks = retrieval.Embeddings(ids, ids, z, mask).trimmed()
    parsed = reductions.parse_redux(redux)  # once for every block
    bq, bc = retrieval.block_sizes(tracks.z.size(1), tracks.z.size(1), len(rows), len(listed))
    dist = torch.cat(
        [
            retrieval.query_block_distances(
                engine, tracks.subset(rows[i : i + bq]), tracks, parsed, engine.device, bc
            )
            for i in range(0, len(rows), bq)
        ]
    )
    text = catalogue.mirex_text(name, listed, rows, dist.numpy())
    atomic_write(out, lambda h: h.write(text), text=True)
    return done
