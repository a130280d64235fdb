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
import time
import warnings
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from lib import retrieval, store, tensor_ops
from lib.errors import RunError
from lib.files import atomic_write

CATALOGUE_VERSION = 1
INDEX_FILE = "segments.faiss"
META_FILE = "catalogue.json"
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
    ``hop_size`` (s), ``metric`` and ``redux``. Returns the folder."""
    for key in ("win_len", "hop_size", "metric", "redux"):
        if key not in settings:
            raise CatalogueError(f"catalogue settings lack {key!r}")
    os.makedirs(folder, exist_ok=True)
    meta_path = os.path.join(folder, META_FILE)
    if os.path.isfile(meta_path):
        os.remove(meta_path)  # the folder is not a valid catalogue until rebuilt
    try:
        if isinstance(embeddings, store.Store):
            z, mask = embeddings.z, embeddings.mask
            if len(z) != len(tracks):
                raise CatalogueError(f"{embeddings.folder}: {len(z)} tracks, not {len(tracks)}")
        else:
            z, mask = store.stack(embeddings)
    except store.StoreError as err:
        raise CatalogueError(str(err)) from err
    rows, cols = np.nonzero(~mask)
    segments = np.stack([rows, cols], 1).astype(np.int32)
    start = time.time()
    index = make_index(
        faiss_vectors(z[rows, cols], settings["metric"]), settings["metric"], kind, nlist
    )
    store.write(folder, z, mask, {"what": "catalogue", "settings": settings, "tracks": tracks})
    atomic_write(os.path.join(folder, "segments.npy"), lambda h: np.save(h, segments))
    atomic_write(
        os.path.join(folder, INDEX_FILE), lambda h: h.write(faiss.serialize_index(index).tobytes())
    )
    meta = {
        "version": CATALOGUE_VERSION,
        "settings": settings,
        "index": {
            "kind": type(index).__name__,
            "windows": int(index.ntotal),
            "nlist": int(getattr(index, "nlist", 0)),
            "build_seconds": time.time() - start,
        },
        "tracks": tracks,
    }
    text = json.dumps(meta, indent=1) + "\n"
    atomic_write(meta_path, lambda h: h.write(text), text=True)
    return folder


@dataclass
class Catalogue:
    folder: str
    settings: dict
    tracks: list
    z: np.ndarray  # (N, S, D) float16, memory-mapped
    mask: np.ndarray  # (N, S) bool
    segments: np.ndarray  # (M, 2) track row, window
    index: object
    info: dict = field(default_factory=dict)

    @property
    def metric(self):
        return self.settings["metric"]

    def window_seconds(self, window):
        """(start, end) in seconds of window ``window`` of a catalogue track."""
        start = window * float(self.settings["hop_size"])
        return start, start + float(self.settings["win_len"])

    def embeddings(self, rows):
        """``retrieval.Embeddings`` of the tracks at ``rows`` (sorted indices or a slice)."""
        if isinstance(rows, slice):
            ids = torch.arange(self.z.shape[0])[rows]
        else:
            rows = np.asarray(rows)
            ids = torch.as_tensor(rows, dtype=torch.long)
        with warnings.catch_warnings():
            # slices of the read-only memory map are only read by the engine: no copy needed
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            z = torch.from_numpy(np.ascontiguousarray(self.z[rows]))
        mask = torch.from_numpy(np.ascontiguousarray(self.mask[rows]))
        return retrieval.Embeddings(ids, ids, z, mask)


def load(folder, mmap=True):
    meta_path = os.path.join(folder, META_FILE)
    if not os.path.isfile(meta_path):
        raise CatalogueError(
            f"{folder}: not a catalogue (no {META_FILE}; build it with 'match.py index')"
        )
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        # a catalogue of this project's first version has the arrays but not the store manifest
        kept = store.read(folder, mmap, store.read_manifest(folder) or {"arrays": []})
        segments = np.load(os.path.join(folder, "segments.npy"))
        index = faiss.read_index(os.path.join(folder, INDEX_FILE))
    except (OSError, ValueError, RuntimeError, store.StoreError) as err:
        raise CatalogueError(f"{folder}: unreadable catalogue ({err})") from err
    z, mask = kept.z, kept.mask
    if meta.get("version") != CATALOGUE_VERSION:
        raise CatalogueError(
            f"{folder}: catalogue version {meta.get('version')}, expected "
            f"{CATALOGUE_VERSION}; rebuild it"
        )
    if z.shape[0] != len(meta["tracks"]) or index.ntotal != len(segments):
        raise CatalogueError(f"{folder}: files do not agree with each other; rebuild it")
    return Catalogue(
        folder, meta["settings"], meta["tracks"], z, mask, segments, index, meta.get("index", {})
    )


###################################################################################################
# Search
###################################################################################################


@dataclass
class Match:
    row: int  # catalogue track row
    distance: float  # track distance (the reduction)
    offset: float  # seconds: the track time at which the clip's start aligns
    pairs: list  # [(clip window, track window, segment distance)], closest first


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


def track_distances(cat, query, rows, redux, block=1024):
    """Stage 2: exact track distances (len(rows),) between the clip windows ``query`` (Sq, D)
    and the catalogue tracks ``rows``."""
    q = torch.from_numpy(np.asarray(query, dtype=np.float16))[None]
    qemb = retrieval.Embeddings(
        torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), q, None
    )
    out = []
    rows = np.asarray(rows)
    whole = len(rows) == cat.z.shape[0] and np.array_equal(rows, np.arange(len(rows)))
    for i in range(0, len(rows), block):
        # every track: contiguous slices, no gather copy
        part = slice(i, i + block) if whole else rows[i : i + block]
        cand = cat.embeddings(part).trimmed()
        out.append(retrieval.block_distances(qemb, cand, redux, metric=cat.metric)[0])
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def segment_distances(cat, query, row):
    """(Sq, Sc) segment distances of the clip windows to the valid windows of track ``row``,
    and those windows' indices."""
    valid = np.nonzero(~cat.mask[row])[0]
    c = torch.from_numpy(np.asarray(cat.z[row, valid], dtype=np.float32))
    q = torch.from_numpy(np.asarray(query, dtype=np.float32))
    return tensor_ops.pairwise_distance_matrix(q, c, mode=cat.metric).numpy(), valid


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
):
    """The ``topk`` catalogue tracks closest to the clip windows ``query`` (Sq, D) (windows
    every ``clip_hop`` s; default: the catalogue's hop), as ``Match`` objects sorted by
    distance."""
    redux = tensor_ops.parse_redux(redux or cat.settings["redux"])  # once for every block
    query = np.asarray(query, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != cat.z.shape[2]:
        raise CatalogueError(f"query windows must be (S, {cat.z.shape[2]}), got {query.shape}")
    if exact:
        rows = np.arange(cat.z.shape[0])
    else:
        rows = np.sort(shortlist(cat, query, neighbours, size, nprobe))
    dist = track_distances(cat, query, rows, redux)
    order = np.argsort(dist, kind="stable")[:topk]
    track_hop = float(cat.settings["hop_size"])
    clip_hop = track_hop if clip_hop is None else float(clip_hop)
    matches = []
    for i in order:
        seg, valid = segment_distances(cat, query, int(rows[i]))
        matches.append(
            Match(
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
