"""The embedding store: the window embeddings of N tracks in one folder, the one on-disk format
of the evaluation cache (``lib/extract.py``), of ``inference.py``'s collected outputs
(``lib/matching/inference.py``) and of the catalogue (``lib/matching/catalogue.py``, which adds
a FAISS index).

    z.npy          (N, S, D) float16 window embeddings, read memory-mapped
    mask.npy       (N, S) bool, True = padding (track i has its S_i <= S windows first)
    <name>.npy     per-track arrays of the user (the evaluation cache: cliques, ids)
    manifest.json  written last: format, version, N, S, D, the arrays, and what made the
                   embeddings (checkpoint, window settings, tracks, ...)

A folder without ``manifest.json`` is not (yet) a store: writing removes it first and writes it
last. Stores too large to hold in memory are written by rows into memory-mapped shards
(``open_shard`` / ``merge_shards``), which an interrupted run reopens and continues.
"""

import errno
import json
import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from lib.errors import RunError
from lib.files import atomic_write, read_json, write_failure

FORMAT = "clews-embedding-store"
VERSION = 1
MANIFEST = "manifest.json"
FP16_MAX = 65504.0


class StoreError(RunError):
    """A store could not be read or written; the message names the folder."""


@dataclass
class Store:
    folder: str
    z: np.ndarray  # (N, S, D) float16, memory-mapped
    mask: np.ndarray  # (N, S) bool
    manifest: dict
    arrays: dict = field(default_factory=dict)  # name -> (N, ...) array

    def __len__(self):
        return self.z.shape[0]


###################################################################################################
# writing
###################################################################################################


def padded_shape(shapes):
    """(N, max S_i, D) of the (S_i, D) shapes of N tracks; ``StoreError`` for none or for
    differing D."""
    if not shapes:
        raise StoreError("no track to put in the store")
    dims = {shape[1] for shape in shapes}
    if len(dims) != 1:
        raise StoreError(f"tracks have embeddings of different sizes: {sorted(dims)}")
    return len(shapes), max(shape[0] for shape in shapes), dims.pop()


def put_row(z, mask, i, e):
    """Track ``i``'s (S_i, D) windows ``e`` into row i of z (N, S, D) float16 (clipped to its
    range) and mask (N, S), the rest of the row padding."""
    z[i, : len(e)] = np.clip(e, -FP16_MAX, FP16_MAX)
    z[i, len(e) :] = 0
    mask[i, : len(e)] = False
    mask[i, len(e) :] = True


def stack(embeddings):
    """List of (S_i, D) arrays -> z (N, max S_i, D) float16 (clipped to its range), mask (N, S)."""
    z = np.zeros(padded_shape([e.shape for e in embeddings]), np.float16)
    mask = np.ones(z.shape[:2], dtype=bool)
    for i, e in enumerate(embeddings):
        put_row(z, mask, i, e)
    return z, mask


def write(folder, z, mask, manifest, arrays=None):
    """A store of ``z`` (N, S, D) and ``mask`` (N, S) with the per-track ``arrays``; the
    ``manifest`` dict says what made them. Returns the folder."""
    os.makedirs(folder, exist_ok=True)
    invalidate(folder)
    z = np.asarray(z).astype(np.float16, copy=False)
    files = {"z": z, "mask": np.asarray(mask, dtype=bool), **(arrays or {})}
    for name, array in files.items():
        atomic_write(os.path.join(folder, f"{name}.npy"), lambda h, a=array: np.save(h, a))
    write_manifest(folder, z.shape, list(arrays or {}), manifest)
    return folder


def write_files(folder, files, load, manifest):
    """A store of the (S_i, D) arrays that ``load(file)`` gives for each of ``files``, in that
    order, written row by row into a memory map (two passes: shapes, then rows), so that a
    collection larger than memory can be stored. Returns the folder."""
    try:
        shape = padded_shape([load(f).shape for f in files])
    except StoreError as err:
        raise StoreError(f"{folder}: {err}") from None
    os.makedirs(folder, exist_ok=True)
    invalidate(folder)
    z = new_memmap(os.path.join(folder, "z.npy"), np.float16, shape)
    mask = np.ones(shape[:2], dtype=bool)
    for i, file in enumerate(files):
        put_row(z, mask, i, load(file))
    z.flush()
    del z
    atomic_write(os.path.join(folder, "mask.npy"), lambda h: np.save(h, mask))
    write_manifest(folder, shape, [], manifest)
    return folder


def write_concatenation(folder, parts, manifest, block=256):
    """A store of the rows of ``parts`` one after the other: a list of (z (N_i, S_i, D), mask
    (N_i, S_i)) pairs (a store's memory maps, new tracks' arrays), padded to the largest S_i.
    Rows are copied ``block`` at a time into a memory map, so a catalogue larger than memory
    can grow. Returns the folder."""
    try:
        shape = padded_shape([(z.shape[1], z.shape[2]) for z, _ in parts])
    except StoreError as err:
        raise StoreError(f"{folder}: {err}") from None
    shape = (sum(len(z) for z, _ in parts), shape[1], shape[2])
    os.makedirs(folder, exist_ok=True)
    invalidate(folder)
    z_all = new_memmap(os.path.join(folder, "z.npy"), np.float16, shape)
    mask_all = np.ones(shape[:2], dtype=bool)
    row = 0
    for z, mask in parts:
        width = z.shape[1]
        for i in range(0, len(z), block):
            rows = slice(row + i, row + min(i + block, len(z)))
            z_all[rows, :width] = np.clip(z[i : i + block], -FP16_MAX, FP16_MAX)
            z_all[rows, width:] = 0
            mask_all[rows, :width] = mask[i : i + block]
        row += len(z)
    z_all.flush()
    del z_all
    atomic_write(os.path.join(folder, "mask.npy"), lambda h: np.save(h, mask_all))
    write_manifest(folder, shape, [], manifest)
    return folder


def invalidate(folder):
    """The folder is not a store until its manifest is written again."""
    path = os.path.join(folder, MANIFEST)
    if os.path.isfile(path):
        os.remove(path)


def write_manifest(folder, shape, array_names, manifest):
    n, nwin, dim = shape
    text = json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "tracks": int(n),
            "windows": int(nwin),
            "dim": int(dim),
            "arrays": array_names,
            **manifest,
        },
        indent=1,
        default=str,
    )
    atomic_write(os.path.join(folder, MANIFEST), lambda h: h.write(text + "\n"), text=True)


###################################################################################################
# writing by rows: resumable shards
###################################################################################################


def shard_dir(folder, rank, world):
    return os.path.join(folder, f"shard-{rank}-of-{world}")


def new_memmap(file, dtype, shape):
    """A new ``.npy`` memory map at ``file`` whose disk blocks are reserved at once: a full disk
    is a ``WriteError`` here rather than a SIGBUS (the process dying without a word) when the
    map is written to later."""
    try:
        array = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
    except OSError as err:
        raise write_failure(file, err) from err
    reserve_blocks(file)
    return array


def reserve_blocks(file):
    """Allocate every disk block of ``file`` now (``WriteError`` when the disk is full)."""
    if not hasattr(os, "posix_fallocate"):  # macOS: no way to reserve; keep the sparse file
        return
    try:
        with open(file, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    except OSError as err:
        # file systems that cannot reserve blocks (some network ones) keep the sparse file
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise write_failure(file, err) from err


def open_shard(folder, rank, world, nrows, nwin, dim):
    """Memory-mapped rows {"z", "mask", "done"} of process ``rank`` of ``world`` (rows rank,
    rank + world, ...), reopened when an earlier run left them (resume)."""
    path = shard_dir(folder, rank, world)
    os.makedirs(path, exist_ok=True)
    shapes = {"z": (nrows, nwin, dim), "mask": (nrows, nwin), "done": (nrows,)}
    dtypes = {"z": np.float16, "mask": np.bool_, "done": np.bool_}
    out = {}
    for name in shapes:
        file = os.path.join(path, f"{name}.npy")
        arr = None
        if os.path.isfile(file):
            try:
                arr = np.lib.format.open_memmap(file, mode="r+")
            except (OSError, ValueError):
                arr = None
            if arr is not None and (arr.shape != shapes[name] or arr.dtype != dtypes[name]):
                arr = None
            if arr is not None:  # a run stopped by a full disk may have left it sparse
                reserve_blocks(file)
        if arr is None:
            arr = new_memmap(file, dtypes[name], shapes[name])
            if name == "done":
                arr[:] = False
        out[name] = arr
    if not out["done"].any():
        out["mask"][:] = True
    return out


def flush_shard(shard):
    # embeddings first, then the rows marked done: a crash in between only redoes work
    shard["z"].flush()
    shard["mask"].flush()
    shard["done"].flush()


def merge_shards(folder, world, manifest, arrays=None):
    """Interleave the ``world`` complete shards into the store (``arrays`` in track order) and
    write the manifest last; the shards are then removed."""
    shards = [
        {
            k: np.load(os.path.join(shard_dir(folder, r, world), f"{k}.npy"), mmap_mode="r")
            for k in ("z", "mask", "done")
        }
        for r in range(world)
    ]
    for r, shard in enumerate(shards):
        if not shard["done"].all():
            raise StoreError(f"{folder}: shard {r} of {world} is incomplete")
    n = sum(s["z"].shape[0] for s in shards)
    nwin, dim = shards[0]["z"].shape[1:]
    invalidate(folder)
    z = new_memmap(os.path.join(folder, "z.npy"), np.float16, (n, nwin, dim))
    mask = np.zeros((n, nwin), dtype=np.bool_)
    for r, shard in enumerate(shards):
        z[r::world] = shard["z"]
        mask[r::world] = shard["mask"]
    z.flush()
    del z
    for name, array in {"mask": mask, **(arrays or {})}.items():
        atomic_write(os.path.join(folder, f"{name}.npy"), lambda h, a=array: np.save(h, a))
    write_manifest(folder, (n, nwin, dim), list(arrays or {}), manifest)
    for r in range(world):
        shutil.rmtree(shard_dir(folder, r, world), ignore_errors=True)


###################################################################################################
# reading
###################################################################################################


def read_manifest(folder):
    """The manifest of the store in ``folder``, or None when there is no (complete) store."""
    manifest = read_json(os.path.join(folder, MANIFEST), StoreError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if manifest.get("version") != VERSION:
        return None
    return manifest


def read(folder, mmap=True, manifest=None):
    """The store in ``folder`` (z memory-mapped copy-on-write), None when there is none;
    ``StoreError`` when its files do not agree with its manifest. ``manifest``: one already read
    (or, for a catalogue of the first version, its own description of the same arrays)."""
    manifest = read_manifest(folder) if manifest is None else manifest
    if manifest is None:
        return None
    try:
        z = np.load(os.path.join(folder, "z.npy"), mmap_mode="c" if mmap else None)
        mask = np.load(os.path.join(folder, "mask.npy"))
        arrays = {
            name: np.load(os.path.join(folder, f"{name}.npy"))
            for name in manifest.get("arrays", [])
        }
    except (OSError, ValueError) as err:
        raise StoreError(f"{folder}: unreadable embedding store ({err})") from err
    if z.ndim != 3 or mask.shape != z.shape[:2] or any(len(a) != len(z) for a in arrays.values()):
        raise StoreError(f"{folder}: the store's files do not agree with each other")
    return Store(folder, z, mask, manifest, arrays)
