"""Segment embeddings of whole tracks for evaluation, their on-disk cache, and the embedding job
that test.py's cache, inference.py and the catalogue share (``run_job``: tracks decoded by worker
processes ahead of the model, failures listed, each result handed to its keeper).

Window settings are in seconds: a window length ``slen`` <= 0 means one embedding for the whole
track (truncated to ``maxlen``); otherwise windows of ``slen`` every ``shop`` seconds, at most
``1 + int((maxlen - slen) / shop)`` of them (in samples), the last one completed by repetition
as the model does. Tracks with fewer windows are padded with masked zero rows.

The cache is one embedding store (``lib/store.py``) per (checkpoint content, model config, window
settings, maxlen, track list and audio files) under ``cache_dir``, with the per-track arrays
``cliques`` and ``ids`` and a manifest naming everything the key was made of. Extraction writes
per-process shards that are flushed as it goes, so an interrupted run continues where it
stopped; a cache is only read when its key matches exactly.
"""

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from lib import store, tensor_ops
from lib.audio import AudioError
from lib.errors import RunError
from lib.metadata import RECHECK_HINT
from lib.retrieval import Embeddings
from lib.runtime import file_digest, frame_count, whole_window_seconds

CACHE_VERSION = 2  # 2: the embedding store's manifest (lib/store.py)
FLUSH_EVERY_S = 30.0


class ExtractionError(RunError):
    """A track could not be embedded; the message names it."""


###################################################################################################
# Windows
###################################################################################################


@dataclass(frozen=True)
class Windows:
    """Where a track's embeddings come from: windows of ``slen`` seconds every ``shop`` seconds
    (0, 0: one embedding of the whole track) over its first ``maxlen`` seconds, at most ``nwin``
    of them, at ``sr`` Hz. ``as_dict()`` is what caches and results.json record."""

    slen: float
    shop: float
    maxlen: float
    nwin: int
    sr: int

    def as_dict(self):
        return asdict(self)


def resolve_windows(model, slen=None, shop=None):
    """(length, hop) in seconds; None takes the model's training value; a length <= 0 means the
    whole track and returns (0.0, 0.0)."""
    model_len, model_hop = model.get_shingle_params()
    slen = model_len if slen is None else slen
    if slen <= 0:
        return 0.0, 0.0
    shop = model_hop if shop is None else shop
    if shop <= 0:
        raise ValueError(f"window hop must be > 0 s when the window length is {slen:g} s")
    return slen, shop


def window_count(maxlen, slen, shop, sr):
    """Most windows a track of ``maxlen`` seconds gives: 1 + int((maxlen - slen) / shop) in
    samples (at least 1); 1 for whole-track embeddings (``slen`` <= 0)."""
    if slen <= 0:
        return 1
    mxlen, length, hop = int(maxlen * sr), int(slen * sr), int(shop * sr)
    if hop < 1:
        raise ValueError(f"window hop {shop} s is shorter than one sample")
    return max(1, 1 + (mxlen - length) // hop)


# DiVers's ``noise_inds_sparse``: the indices of a track's segments that a sound-event tagger
# found to be non-music; a window is left out by ``music_only`` when more than this share of
# its audio lies in such segments
NON_MUSIC_FIELD = "noise_inds_sparse"
MOSTLY = 0.5


def window_spans(windows, track_seconds, count):
    """(start, end) seconds of a track's first ``count`` windows, cut at the track's end (its
    padding holds no music or noise): whole-track windows span the first ``maxlen`` s."""
    if windows.slen <= 0:
        return [(0.0, min(track_seconds, windows.maxlen))] * count
    return [
        (i * windows.shop, min(i * windows.shop + windows.slen, track_seconds))
        for i in range(count)
    ]


def non_music_windows(windows, track_seconds, segments, segment_seconds, count):
    """Bool (count,): True where more than ``MOSTLY`` of a window's audio lies in the segments
    ``segments`` (indices of ``segment_seconds``-long segments from the track's start)."""
    spans = [(k * segment_seconds, (k + 1) * segment_seconds) for k in sorted(set(segments))]
    out = torch.zeros(count, dtype=torch.bool)
    for i, (start, end) in enumerate(window_spans(windows, track_seconds, count)):
        if end <= start:
            continue
        noise = sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans)
        out[i] = noise > MOSTLY * (end - start)
    return out


def non_music_mask(info, keys, windows, count, segment_seconds):
    """Bool (len(keys), count): the windows of each track that lie mostly in its non-music
    segments (``info[key]["noise_inds_sparse"]``; a track without the field has none)."""
    return torch.stack(
        [
            non_music_windows(
                windows, info[k]["length"], info[k].get(NON_MUSIC_FIELD, ()), segment_seconds, count
            )
            for k in keys
        ]
    )


@torch.inference_mode()
def window_embeddings(model, audio, slen, shop, device, max_windows=32, max_count=None):
    """Embeddings (S, D) float32 (on the CPU) of the windows of ``slen`` s every ``shop`` s of one
    waveform ``audio`` (T,) at the model's rate, the last window completed with the model's
    padding; ``slen`` <= 0 embeds the whole waveform as one window. Only ``max_windows``
    windows are framed and embedded at a time, so memory does not grow with the file's length;
    ``max_count`` keeps the first windows only."""
    sr = model.sr
    x = audio.to(device)
    if slen <= 0:
        seconds = whole_window_seconds(x.size(-1), sr)
        return model.embed(model.prepare(x[None], seconds, seconds).clone())[0][0].float().cpu()
    length, hop = int(slen * sr), int(shop * sr)
    count = frame_count(x.size(-1), length, hop)
    if max_count is not None:
        count = min(count, int(max_count))
    # pad the whole waveform once, as framing it whole would, then cut exact chunks of windows
    total = (count - 1) * hop + length
    if x.size(-1) < total:
        x = tensor_ops.force_length(x, total, pad_mode=model.frame_pad)
    parts = []
    for first in range(0, count, max_windows):
        last = min(count, first + max_windows)
        piece = x[..., first * hop : (last - 1) * hop + length]
        shingles = model.prepare(piece[None], shingle_len=slen, shingle_hop=shop)
        parts.append(model.embed(shingles.clone())[0][0].float().cpu())
    return torch.cat(parts)


def embed_track(model, audio, slen, shop, nwin, device, max_windows=32):
    """Embeddings (nwin, D) float32 and padding mask (nwin,) of one track ``audio`` (T,) at the
    model's rate: its first ``nwin`` windows, missing ones as masked zero rows."""
    z = window_embeddings(model, audio, slen, shop, device, max_windows, max_count=nwin)
    out = torch.zeros(nwin, z.size(-1))
    out[: z.size(0)] = z
    mask = torch.ones(nwin, dtype=torch.bool)
    mask[: z.size(0)] = False
    return out, mask


###################################################################################################
# The embedding job: decoding workers ahead of the model
###################################################################################################


class TrackFailed(Exception):
    """One track of an embedding job failed (the message names it); the job goes on."""


def unbatched(batch):
    """``collate_fn`` for loaders of one item at a time that keeps numpy arrays as they are: a
    worker then sends the audio through its pipe, not through shared memory (/dev/shm), which
    containers often keep too small for a whole track (64 MB by default in Docker) and whose
    exhaustion makes torch's DataLoader wait forever."""
    return batch[0]


class Decoding(torch.utils.data.Dataset):
    """The tracks an embedding job decodes: items (item, waveform (T,) float32 numpy array or
    None, error text or None) of ``items``; an error travels back as text, naming the file, so
    that the main process lists it and goes on (a decoder crash does not stop the others).
    Subclasses define ``decode(item)`` and ``name(item)`` (the file)."""

    def __init__(self, items):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        try:
            return item, self.decode(item), None
        except AudioError as err:
            return item, None, str(err)
        except Exception as err:
            return item, None, f"{self.name(item)}: {type(err).__name__}: {err}"


def run_job(decoding, embed, bar, nworkers=0, prefetch=2, report=None):
    """Decode the tracks of ``decoding`` in ``nworkers`` worker processes, ahead of
    ``embed(item, audio (T,) tensor)`` in this one (which embeds and keeps the result). A track
    that cannot be decoded, or whose ``embed`` raises ``TrackFailed``, is listed (and given to
    ``report``); the job goes on. ``bar``: the progress bar, one step a track. Returns
    [(item, reason)] of the failed tracks."""
    loader = torch.utils.data.DataLoader(
        decoding,
        batch_size=1,
        collate_fn=unbatched,
        num_workers=nworkers,
        prefetch_factor=prefetch if nworkers > 0 else None,
    )
    failed = []
    for item, audio, error in loader:
        if error is None:
            try:
                embed(item, torch.from_numpy(audio))
            except TrackFailed as err:
                error = str(err)
        if error is not None:
            failed.append((item, error))
            if report is not None:
                report(error)
        bar.update(1)
    return failed


class TrackAudio(Decoding):
    """Full tracks (truncated to ``maxlen`` s) of the dataset's ``keys`` at rows ``rows``."""

    def __init__(self, dataset, keys, rows, maxlen):
        super().__init__(rows)
        self.dataset, self.keys, self.maxlen = dataset, keys, maxlen

    def decode(self, row):
        duration = None if self.maxlen is None or self.maxlen <= 0 else float(self.maxlen)
        return self.dataset.load_track(self.keys[row], duration)

    def name(self, row):
        return self.dataset.filename[self.keys[row]]


###################################################################################################
# Cache keys
###################################################################################################


def tracks_digest(dataset, keys):
    """Hash of the track list and of every audio file's size and modification time."""
    digest = hashlib.sha256()
    for key in keys:
        path = dataset.filename[key]
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        info = dataset.info[key]
        digest.update(f"{key}\t{info['id']}\t{dataset.clique_of[key]}\t{path}\t{stamp}\n".encode())
    return digest.hexdigest()


def cache_key(parts):
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_parts(checkpoint, model_conf, partition, dataset, keys, precision):
    """What an evaluation cache entry depends on besides its windows: the checkpoint's bytes,
    the model config (a plain dict), the partition, the tracks (list and file stamps) and the
    precision when it is not 32 bits (32-bit entries keep the keys they always had)."""
    parts = {
        "checkpoint": file_digest(checkpoint),
        "model": model_conf,
        "partition": partition,
        "tracks": tracks_digest(dataset, keys),
    }
    if precision != "32-true":
        parts["precision"] = precision
    return parts


def cache_entry(cache_dir, key_parts, windows):
    """(folder, key) of the cache entry of ``key_parts`` (``cache_parts``) with the ``Windows``
    ``windows``."""
    key = cache_key({**key_parts, **windows.as_dict(), "cache_version": CACHE_VERSION})
    return os.path.join(cache_dir, key[:24]), key


def cache_manifest(windows, key_parts):
    """What the manifest of a cache entry records beyond its key."""
    return {"settings": windows.as_dict(), "parts": key_parts}


###################################################################################################
# Store
###################################################################################################


def load_store(folder, key):
    """The cached Embeddings in ``folder`` if it is complete and made for ``key``, else None."""
    try:
        cached = store.read(folder)
    except store.StoreError:
        return None
    if cached is None or cached.manifest.get("key") != key:
        return None
    if cached.manifest.get("cache_version") != CACHE_VERSION:
        return None
    return Embeddings(
        torch.from_numpy(cached.arrays["cliques"]),
        torch.from_numpy(cached.arrays["ids"]),
        torch.from_numpy(cached.z),
        torch.from_numpy(cached.mask),
    )


def extract_shard(
    model, dataset, keys, folder, rank, world, windows, device, nworkers=0, printer=None
):
    """Embed this process's rows (rank, rank + world, ...) of ``keys`` into its shard of
    ``folder``, skipping rows an interrupted run already finished. Every unreadable track is
    listed in one ExtractionError at the end."""
    slen, shop, maxlen, nwin = windows.slen, windows.shop, windows.maxlen, windows.nwin
    rows = list(range(rank, len(keys), world))
    dim = model.embedding_dim
    shard = store.open_shard(folder, rank, world, len(rows), nwin, dim)
    local = {row: i for i, row in enumerate(rows)}
    todo = [row for row in rows if not shard["done"][local[row]]]
    if not todo:
        return
    if len(todo) < len(rows) and printer is not None:
        printer(f"  resuming: {len(rows) - len(todo):,} of {len(rows):,} tracks already embedded")
    last_flush = time.time()
    bar = tqdm(
        total=len(rows),
        initial=len(rows) - len(todo),
        desc=f"embeddings [{rank}]",
        disable=rank != 0,
        unit="track",
        dynamic_ncols=True,
    )

    def keep(row, audio):
        nonlocal last_flush
        key = keys[row]
        try:
            z, mask = embed_track(model, audio, slen, shop, nwin, device)
        except torch.OutOfMemoryError as err:
            raise ExtractionError(
                f"{dataset.filename[key]}: out of memory while embedding "
                f"({audio.shape[-1] / dataset.samplerate:.0f} s of audio); lower maxlen"
            ) from err
        if not bool(torch.isfinite(z).all()) or float(z.abs().max()) > store.FP16_MAX:
            raise ExtractionError(
                f"{dataset.filename[key]}: the model gave non-finite or fp16-overflowing "
                "embeddings for this track"
            )
        i = local[row]
        shard["z"][i] = z.numpy().astype(np.float16)
        shard["mask"][i] = mask.numpy()
        shard["done"][i] = True
        if time.time() - last_flush > FLUSH_EVERY_S:
            store.flush_shard(shard)
            last_flush = time.time()

    try:  # go on past unreadable tracks: one run lists every one of them
        failed = run_job(TrackAudio(dataset, keys, todo, maxlen), keep, bar, nworkers, prefetch=4)
    finally:
        store.flush_shard(shard)
        bar.close()
    unreadable = [reason for _, reason in failed]
    if unreadable:
        raise ExtractionError(unreadable_message(unreadable))


def unreadable_message(errors, shown=5):
    """One line for the decoding errors ``errors`` ('<path>: <reason>' each)."""
    more = f"; and {len(errors) - shown:,} more" if len(errors) > shown else ""
    return (
        f"{len(errors):,} track(s) could not be read: "
        + "; ".join(errors[:shown])
        + more
        + f"; {RECHECK_HINT}"
    )


def merge_shards(folder, key, keys, dataset, world, manifest_extra):
    """Rank 0: the shards into the store, with the tracks' cliques and song ids."""
    cliques = np.array([dataset.clique_id[dataset.clique_of[k]] for k in keys], dtype=np.int64)
    ids = np.array([dataset.info[k]["id"] for k in keys], dtype=np.int64)
    try:
        store.merge_shards(
            folder,
            world,
            {"key": key, "cache_version": CACHE_VERSION, **manifest_extra},
            {"cliques": cliques, "ids": ids},
        )
    except store.StoreError as err:
        raise ExtractionError(str(err)) from err


def embeddings_for(
    model, dataset, keys, windows, key_parts, cache_dir, fabric, nworkers=0, printer=print
):
    """Embeddings of ``keys`` with the ``Windows`` ``windows``, from the cache when it holds
    exactly these (checkpoint, windows, tracks), else extracted by all processes and cached."""
    folder, key = cache_entry(cache_dir, key_parts, windows)
    cached = load_store(folder, key)
    what = describe_windows(windows)
    if cached is not None:
        printer(f"Embeddings ({what}): {len(keys):,} tracks from the cache {folder}")
        return cached
    printer(f"Embeddings ({what}): extracting {len(keys):,} tracks into {folder}")
    os.makedirs(folder, exist_ok=True)
    start = time.time()
    extract_shard(
        model,
        dataset,
        keys,
        folder,
        fabric.global_rank,
        fabric.world_size,
        windows,
        fabric.device,
        nworkers,
        printer,
    )
    fabric.barrier()
    if fabric.is_global_zero:
        manifest = cache_manifest(windows, key_parts)
        merge_shards(folder, key, keys, dataset, fabric.world_size, manifest)
    fabric.barrier()
    cached = load_store(folder, key)
    if cached is None:
        raise ExtractionError(f"{folder}: the embeddings cache could not be written or read")
    printer(f"  done in {time.time() - start:.0f} s")
    return cached


def describe_windows(windows):
    """'20 s / 5 s hop, <= 117 windows' or 'whole track (first 600 s)'."""
    if windows.slen <= 0:
        return f"whole track (first {windows.maxlen:g} s)"
    return f"{windows.slen:g} s / {windows.shop:g} s hop, <= {windows.nwin} windows"


def settings_for(model, slen, shop, maxlen):
    """The ``Windows`` of a length and hop in seconds (None: the model's training values; a
    length <= 0: the whole track) over ``maxlen`` seconds."""
    slen, shop = resolve_windows(model, slen, shop)
    if maxlen is None or maxlen <= 0:
        raise ValueError(f"maxlen must be > 0 seconds, got {maxlen}")
    return Windows(slen, shop, maxlen, window_count(maxlen, slen, shop, model.sr), model.sr)
