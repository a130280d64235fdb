"""A catalogue of segment embeddings for "which tracks contain a version of this clip, and where".

On disk (one folder): the tracks' window embeddings as an embedding store (``lib/store.py``:
``z.npy`` (N, S, D) float16, ``mask.npy`` (N, S), True = padding, ``manifest.json``),
``segments.faiss`` (a FAISS index over every valid window, as vectors whose inner product or L2
distance ranks like the model's segment distance) with ``segments.npy`` (M, 2) = (track row,
window) of each FAISS vector, and ``catalogue.json`` (settings, track ids and sources), written
last: a folder without it is not a catalogue.

Search, for a clip's window embeddings (Sq, D):
1. approximate: the ``neighbours`` nearest catalogue windows of every clip window from FAISS;
   their tracks, ordered by their closest window, give a shortlist of ``shortlist`` tracks;
2. exact: the track distance (the model's reduction, e.g. ``bpwr-5``) to every shortlisted track
   (or to every track with ``exact=True``), sorted.
For each match the closest window pairs say where: clip seconds and track seconds.
"""

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field

import faiss
import numpy as np
from lib import reductions, store
from lib.errors import RunError
from lib.files import atomic_write, exclusive_lock, read_json

CATALOGUE_VERSION = 2  # 2: files in a generation folder; 1: files in the folder itself
READABLE_VERSIONS = (1, 2)
INDEX_FILE = "segments.faiss"
META_FILE = "catalogue.json"
LOCK_FILE = ".writer.lock"
GENERATION = re.compile(r"generation-\d{6}")
CALIBRATION_FILE = re.compile(r"calibration-[0-9a-f]{12}\.npz")  # lib/matching/calibration.py's
FIRST_VERSION_FILES = ("z.npy", "mask.npy", "manifest.json", "segments.npy", INDEX_FILE)
FLAT_BELOW = 50_000  # windows: below this an exact flat index is as fast as any


class CatalogueError(RunError):
    """A catalogue cannot be built or read; the message names the folder and the problem."""


###################################################################################################
# Vectors that FAISS can rank like the model's segment distance
###################################################################################################


def faiss_vectors(z, metric):
    """(M, D) float32 for FAISS: unit vectors for cosine (inner product index), the embeddings
    themselves for (normalised) squared Euclidean (L2 index)."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    if metric == "cos":
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return z


def uses_inner_product(metric):
    if metric == "cos":
        return True
    if metric in ("sqeuc", "nsqeuc"):
        return False
    raise CatalogueError(f"segment metric {metric!r} has no FAISS equivalent (cos, sqeuc, nsqeuc)")


def make_index(vectors, metric, kind="auto", nlist=None, seed=0):
    """A FAISS index over ``vectors`` (M, D): ``flat`` (exact) or ``ivf`` (inverted lists over
    k-means cells, trained on a sample); ``auto`` = flat below ``FLAT_BELOW`` windows."""
    m, dim = vectors.shape
    ip = uses_inner_product(metric)
    if kind == "auto":
        kind = "flat" if m < FLAT_BELOW else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim) if ip else faiss.IndexFlatL2(dim)
        index.add(vectors)
        return index
    if kind != "ivf":
        raise CatalogueError(f"index kind {kind!r}: one of auto, flat, ivf")
    nlist = int(nlist or max(1, round(math.sqrt(m))))
    quantizer = faiss.IndexFlatIP(dim) if ip else faiss.IndexFlatL2(dim)
    mtype = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, mtype)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(m, size=min(m, 40 * nlist), replace=False))]
    index.train(sample)
    index.add(vectors)
    return index


###################################################################################################
# Building and reading
###################################################################################################


def build(folder, tracks, embeddings, settings, kind="auto", nlist=None):
    """Write a catalogue of ``tracks`` (list of dicts with at least ``id``) whose window
    embeddings are ``embeddings``: a list of (S_i, D) arrays or an embedding store (e.g. the one
    inference.py wrote) of these tracks in this order; ``settings`` holds at least ``win_len``,
    ``hop_size`` (s), ``metric`` and ``redux``. A catalogue already in ``folder`` is replaced
    at once when the new one is complete (readers see the old or the new one). Returns the
    folder."""
    for key in ("win_len", "hop_size", "metric", "redux"):
        if key not in settings:
            raise CatalogueError(f"catalogue settings lack {key!r}")
    check_unique_ids(folder, tracks)
    try:
        if isinstance(embeddings, store.Store):
            z, mask = embeddings.z, embeddings.mask
            if len(z) != len(tracks):
                raise CatalogueError(f"{embeddings.folder}: {len(z)} tracks, not {len(tracks)}")
        else:
            z, mask = store.stack(embeddings)
    except store.StoreError as err:
        raise CatalogueError(str(err)) from err
    segments = window_segments(mask)
    start = time.time()
    vectors = faiss_vectors(z[segments[:, 0], segments[:, 1]], settings["metric"])
    index = make_index(vectors, settings["metric"], kind, nlist)
    with writer_lock(folder):
        generation = write_generation(folder, [(z, mask)], segments, index, settings)
        info = index_info(index, time.time() - start)
        publish(folder, generation, settings, tracks, info, kept_calibration(folder, settings))
    return folder


def append(folder, tracks, embeddings):
    """Add ``tracks`` (dicts with at least ``id``, none already in the catalogue) with their
    window embeddings (list of (S_i, D) arrays) to the catalogue in ``folder``, without
    touching its other tracks' embeddings or retraining its index: the new windows are added
    to a copy of the FAISS index. The enlarged catalogue is a new generation folder, published
    at once by rewriting ``catalogue.json`` (a reader sees the old or the new catalogue).
    Returns the new catalogue."""
    if not tracks:
        raise CatalogueError(f"{folder}: no track to add")
    with writer_lock(folder):
        cat = load(folder)
        check_unique_ids(folder, cat.tracks + list(tracks))
        try:
            z_new, mask_new = store.stack(embeddings)
        except store.StoreError as err:
            raise CatalogueError(f"{folder}: {err}") from err
        if z_new.shape[2] != cat.z.shape[2]:
            raise CatalogueError(
                f"{folder}: the new embeddings have {z_new.shape[2]} dimensions, the catalogue "
                f"{cat.z.shape[2]} (another model?)"
            )
        start = time.time()
        new_segments = window_segments(mask_new)
        vectors = faiss_vectors(z_new[new_segments[:, 0], new_segments[:, 1]], cat.metric)
        index = faiss.clone_index(cat.index)
        index.add(vectors)
        new_segments[:, 0] += len(cat.tracks)
        segments = np.concatenate([cat.segments, new_segments])
        parts = [(cat.z, cat.mask), (z_new, mask_new)]
        generation = write_generation(folder, parts, segments, index, cat.settings)
        info = index_info(index, cat.info.get("build_seconds", 0.0) + time.time() - start)
        publish(folder, generation, cat.settings, cat.tracks + list(tracks), info, cat.calibration)
    return load(folder)


def check_unique_ids(folder, tracks):
    seen, twice = set(), []
    for track in tracks:
        if track["id"] in seen:
            twice.append(track["id"])
        seen.add(track["id"])
    if twice:
        shown = ", ".join(twice[:5]) + (f", ... ({len(twice)} in all)" if len(twice) > 5 else "")
        raise CatalogueError(f"{folder}: track ids must be unique; more than once: {shown}")


def window_segments(mask):
    """(M, 2) int32 (track row, window) of every valid window of ``mask`` (N, S)."""
    rows, cols = np.nonzero(~np.asarray(mask))
    return np.stack([rows, cols], 1).astype(np.int32)


def index_info(index, seconds):
    return {
        "kind": type(index).__name__,
        "windows": int(index.ntotal),
        "nlist": int(getattr(index, "nlist", 0)),
        "build_seconds": seconds,
    }


def write_generation(folder, parts, segments, index, settings):
    """A new generation folder in ``folder`` holding the rows of ``parts`` ((z, mask) pairs, one
    after the other) as an embedding store, ``segments`` and the FAISS ``index``; returns its
    name (not yet published)."""
    generation = next_generation(folder)
    target = os.path.join(folder, generation)
    store.write_concatenation(target, parts, {"what": "catalogue", "settings": settings})
    atomic_write(os.path.join(target, "segments.npy"), lambda h: np.save(h, segments))
    data = faiss.serialize_index(index).tobytes()
    atomic_write(os.path.join(target, INDEX_FILE), lambda h: h.write(data))
    return generation


###################################################################################################
# Generations: the files of one state of the catalogue, published by catalogue.json
###################################################################################################


def writer_lock(folder):
    """One writer (build, add, calibrate) at a time per catalogue folder."""
    return exclusive_lock(
        os.path.join(folder, LOCK_FILE),
        waiting=lambda: print(f"{folder}: another process is writing it; waiting for it"),
    )


def generations(folder):
    """The generation folders in ``folder``, oldest first."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if GENERATION.fullmatch(n))


def next_generation(folder):
    found = generations(folder)
    number = int(found[-1].split("-")[1]) + 1 if found else 1
    return f"generation-{number:06d}"


def publish(folder, generation, settings, tracks, index, calibration=None):
    """Make ``generation`` the catalogue by an atomic rewrite of ``catalogue.json``, then remove
    what no reader can still be opening: generations and calibration measurements before the
    previous ones, and the files of a first-version catalogue (kept in the folder itself)."""
    old = read_json(os.path.join(folder, META_FILE), CatalogueError) or {}
    meta = {
        "version": CATALOGUE_VERSION,
        "generation": generation,
        "settings": settings,
        "index": index,
        "calibration": calibration,
        "tracks": tracks,
    }
    text = json.dumps(meta, indent=1) + "\n"
    atomic_write(os.path.join(folder, META_FILE), lambda h: h.write(text), text=True)
    keep = {generation, old.get("generation")}
    for name in generations(folder):
        if name not in keep:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    measured = {(c or {}).get("file") for c in (calibration, old.get("calibration"))}
    for name in os.listdir(folder):
        if CALIBRATION_FILE.fullmatch(name) and name not in measured:
            os.remove(os.path.join(folder, name))
    if old and old.get("generation") is None:  # the flat files of the first version
        for name in FIRST_VERSION_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                os.remove(path)


CALIBRATION_SETTINGS = ("checkpoint_sha256", "samplerate", "win_len", "hop_size", "metric", "redux")


def calibration_applies(calibration, settings):
    """Whether a calibration measured under ``calibration["settings"]`` holds for a catalogue
    of ``settings`` (same model, windows and reduction)."""
    if not calibration:
        return False
    measured = calibration.get("settings", {})
    return all(measured.get(k) == settings.get(k) for k in CALIBRATION_SETTINGS)


def kept_calibration(folder, settings):
    """The calibration of the catalogue being replaced in ``folder``, if it holds for the new
    ``settings`` (a rebuild with the same model and windows keeps it)."""
    try:
        old = read_json(os.path.join(folder, META_FILE), CatalogueError) or {}
    except CatalogueError:
        return None
    calibration = old.get("calibration")
    return calibration if calibration_applies(calibration, settings) else None


def set_calibration(folder, calibration):
    """Store ``calibration`` (a JSON-able dict, or None to remove it) in the catalogue's
    ``catalogue.json``; the rest stays as it is."""
    with writer_lock(folder):
        cat = load(folder)
        generation = cat.generation
        if generation is None:  # a first-version catalogue: its files move to a generation
            parts = [(cat.z, cat.mask)]
            generation = write_generation(folder, parts, cat.segments, cat.index, cat.settings)
        publish(folder, generation, cat.settings, cat.tracks, cat.info, calibration)


@dataclass
class CatalogueState:
    """What a catalogue folder holds now: its tracks and settings, their window embeddings and
    the index of the windows (``load``)."""

    folder: str
    settings: dict
    tracks: list
    z: np.ndarray  # (N, S, D) float16, memory-mapped
    mask: np.ndarray  # (N, S) bool
    segments: np.ndarray  # (M, 2) track row, window
    index: object
    info: dict = field(default_factory=dict)
    generation: str = None  # folder of the files; None: a first-version catalogue (flat)
    calibration: dict = None  # from calibrate(): threshold data, or None

    @property
    def metric(self):
        return self.settings["metric"]

    def window_seconds(self, window):
        """(start, end) in seconds of window ``window`` of a catalogue track."""
        start = window * float(self.settings["hop_size"])
        return start, start + float(self.settings["win_len"])


def load(folder, mmap=True):
    """The catalogue in ``folder`` as ``catalogue.json`` names it now. A writer that publishes a
    new generation meanwhile may remove the one named before; the load then starts again."""
    meta = read_meta(folder)
    for _ in range(2):
        try:
            return load_generation(folder, meta, mmap)
        except CatalogueError:
            newer = read_meta(folder)
            if newer.get("generation") == meta.get("generation"):
                raise
            meta = newer
    return load_generation(folder, meta, mmap)


def read_meta(folder):
    meta = read_json(os.path.join(folder, META_FILE), CatalogueError)
    if meta is None:
        raise CatalogueError(
            f"{folder}: not a catalogue (no {META_FILE}; build it with 'match.py index')"
        )
    if meta.get("version") not in READABLE_VERSIONS:
        raise CatalogueError(
            f"{folder}: catalogue version {meta.get('version')}, expected "
            f"{CATALOGUE_VERSION}; rebuild it"
        )
    return meta


def load_generation(folder, meta, mmap):
    generation = meta.get("generation")
    files = folder if generation is None else os.path.join(folder, generation)
    try:
        # a catalogue of this project's first version has the arrays but not the store manifest
        kept = store.read(files, mmap, store.read_manifest(files) or {"arrays": []})
        segments = np.load(os.path.join(files, "segments.npy"))
        index = faiss.read_index(os.path.join(files, INDEX_FILE))
    except (OSError, ValueError, RuntimeError, store.StoreError) as err:
        raise CatalogueError(f"{folder}: unreadable catalogue ({err})") from err
    z, mask = kept.z, kept.mask
    if z.shape[0] != len(meta["tracks"]) or index.ntotal != len(segments):
        raise CatalogueError(f"{folder}: files do not agree with each other; rebuild it")
    return CatalogueState(
        folder,
        meta["settings"],
        meta["tracks"],
        z,
        mask,
        segments,
        index,
        meta.get("index", {}),
        generation,
        meta.get("calibration"),
    )


###################################################################################################
# Search
###################################################################################################


@dataclass
class TrackHit:
    """A track that a search found for a clip."""

    row: int  # catalogue track row
    distance: float  # track distance (the reduction)
    offset: float  # seconds: the track time at which the clip's start aligns
    pairs: list  # [(clip window, track window, segment distance)], closest first


def clock(seconds):
    """``m:ss.s`` of a time in seconds (negative ones as 0)."""
    seconds = max(0.0, float(seconds))
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def aligned_ranges(offset, duration):
    """(clip range, track range) in seconds of a clip of ``duration`` s whose start lies at
    track time ``offset`` (negative: the clip starts before the track)."""
    clip0 = max(0.0, -offset)
    track0 = max(0.0, offset)
    return (clip0, duration), (track0, track0 + duration - clip0)


def shortlist(cat, query, neighbours=256, size=100, nprobe=16):
    """Stage 1: catalogue rows of the tracks owning the nearest windows of any query window
    (Sq, D), closest first, at most ``size`` of them."""
    if hasattr(cat.index, "nprobe"):
        cat.index.nprobe = int(nprobe)
    k = min(int(neighbours), cat.index.ntotal)
    scores, found = cat.index.search(faiss_vectors(query, cat.metric), k)
    valid = found >= 0
    rows = cat.segments[found[valid], 0]
    scores = scores[valid]
    # closeness: larger inner product / smaller L2 is closer
    order = np.argsort(-scores if uses_inner_product(cat.metric) else scores, kind="stable")
    _, first = np.unique(rows[order], return_index=True)
    ranked = rows[order][np.sort(first)]
    return ranked[: int(size)]


def track_distances(cat, query, rows, redux, block=512, scores=reductions.track_scores):
    """Stage 2: exact track distances (len(rows),) float32 between the clip windows ``query``
    (Sq, D) and the catalogue tracks ``rows``, a block of tracks at a time, by ``scores`` (numpy
    by default; ``runtime.WindowModel.track_scores``: the backend's own)."""
    out = []
    rows = np.asarray(rows)
    whole = len(rows) == cat.z.shape[0] and np.array_equal(rows, np.arange(len(rows)))
    for i in range(0, len(rows), block):
        # every track: contiguous slices, no gather copy
        part = slice(i, i + block) if whole else rows[i : i + block]
        out.append(scores(query, cat.z[part], cat.mask[part], redux, cat.metric))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def segment_distances(cat, query, row):
    """(Sq, Sc) segment distances of the clip windows to the valid windows of track ``row``,
    and those windows' indices."""
    valid = np.nonzero(~cat.mask[row])[0]
    track = np.asarray(cat.z[row, valid], dtype=np.float32)
    return reductions.segment_distances(query, track, cat.metric), valid


def closest_pairs(dist, valid, count):
    """Up to ``count`` disjoint (clip window, track window, distance) pairs, closest first
    (greedy best pairs without replacement)."""
    dist = dist.copy()
    pairs = []
    for _ in range(min(count, *dist.shape)):
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        pairs.append((int(i), int(valid[j]), float(dist[i, j])))
        dist[i, :] = np.inf
        dist[:, j] = np.inf
    return pairs


def best_offset(dist, valid, clip_hop, track_hop):
    """Where the clip sits in the track: the time offset (s, track time of the clip's start,
    on the track's window grid) whose aligned window pairs have the smallest mean distance,
    clip windows that fall outside the track counting as the median pair distance (an
    unrelated pair): in music with repeated sections a shorter diagonal through a repeat
    would otherwise beat the whole clip in place. Offsets supported by fewer than half of the
    clip's windows are not considered (unless no offset has that many), so a single chance
    match cannot win."""
    nq = dist.shape[0]
    starts_q = np.arange(nq)[:, None] * clip_hop
    starts_c = valid[None, :] * track_hop
    offset = np.rint((starts_c - starts_q) / track_hop).astype(np.int64)  # in track hops
    keys, inverse = np.unique(offset, return_inverse=True)
    total = np.bincount(inverse.ravel(), weights=dist.ravel(), minlength=len(keys))
    count = np.bincount(inverse.ravel(), minlength=len(keys))
    outside = float(np.median(dist))
    mean = (total + (nq - np.minimum(count, nq)) * outside) / np.maximum(count, nq)
    enough = count >= max(1, (nq + 1) // 2)
    if enough.any():
        mean = np.where(enough, mean, np.inf)
    return float(keys[int(np.argmin(mean))] * track_hop)


def search(
    cat,
    query,
    topk=10,
    redux=None,
    exact=False,
    neighbours=256,
    size=100,
    nprobe=16,
    pairs=5,
    clip_hop=None,
    scores=reductions.track_scores,
):
    """The ``topk`` catalogue tracks closest to the clip windows ``query`` (Sq, D) (windows
    every ``clip_hop`` s; default: the catalogue's hop), as ``TrackHit`` objects sorted by
    distance; ``scores``: see ``track_distances``."""
    redux = reductions.parse_redux(redux or cat.settings["redux"])  # once for every block
    query = np.asarray(query, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != cat.z.shape[2]:
        raise CatalogueError(f"query windows must be (S, {cat.z.shape[2]}), got {query.shape}")
    if exact:
        rows = np.arange(cat.z.shape[0])
    else:
        rows = np.sort(shortlist(cat, query, neighbours, size, nprobe))
    dist = track_distances(cat, query, rows, redux, scores=scores)
    order = np.argsort(dist, kind="stable")[:topk]
    track_hop = float(cat.settings["hop_size"])
    clip_hop = track_hop if clip_hop is None else float(clip_hop)
    matches = []
    for i in order:
        seg, valid = segment_distances(cat, query, int(rows[i]))
        matches.append(
            TrackHit(
                int(rows[i]),
                float(dist[i]),
                best_offset(seg, valid, clip_hop, track_hop),
                closest_pairs(seg, valid, pairs),
            )
        )
    return matches


###################################################################################################
# MIREX audio cover song identification output
###################################################################################################


def read_file_list(path):
    """Audio paths of a MIREX list file (one per line; blank lines ignored). Missing files are
    one error naming all of them."""
    if not os.path.isfile(path):
        raise CatalogueError(f"{path}: list file not found")
    with open(path, encoding="utf-8") as handle:
        files = [line.strip() for line in handle if line.strip()]
    if not files:
        raise CatalogueError(f"{path}: no file listed")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 5 else ""
        )
        raise CatalogueError(f"{path}: listed files not found: {shown}")
    return files


def collection_rows(collection, queries):
    """0-based collection row of every query; a query outside the collection is an error."""
    row = {path: i for i, path in enumerate(collection)}
    absent = [q for q in queries if q not in row]
    if absent:
        raise CatalogueError(
            f"queries must be files of the collection; not in it: {', '.join(absent[:5])}"
        )
    return [row[q] for q in queries]


def mirex_text(name, collection, rows, dist):
    """The MIREX cover-song distance matrix file: the submission name, the numbered collection
    (1-based), a 'Q/R' header of collection numbers, then one row per query: its number in the
    collection (``rows``: 0-based collection rows of the queries) and its distance to every
    collection file. ``dist`` is (Q, N)."""
    lines = [name]
    lines += [f"{i + 1}\t{path}" for i, path in enumerate(collection)]
    lines.append("Q/R\t" + "\t".join(str(i + 1) for i in range(len(collection))))
    for row, values in zip(rows, np.asarray(dist)):
        lines.append(f"{row + 1}\t" + "\t".join(f"{float(d):.6g}" for d in values))
    return "\n".join(lines) + "\n"
