"""The embedding store (lib/store.py): one folder of window embeddings, masks and a manifest,
written whole, file by file or in resumable shards, and read back as it was written."""

import json
import os

import numpy as np
import pytest

from lib import store


def tracks(seed=0, dim=6, lengths=(3, 1, 5)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]


def test_written_whole_and_read_back(tmp_path):
    embeddings = tracks()
    ids = np.array([7, 8, 9])
    z, mask = store.stack(embeddings)
    store.write(tmp_path, z, mask, {"what": "test", "win_len": 20.0}, {"ids": ids})
    got = store.read(tmp_path)
    assert got.z.shape == (3, 5, 6) and got.z.dtype == np.float16
    assert got.mask.tolist() == [[False] * 3 + [True] * 2, [False] + [True] * 4, [False] * 5]
    for i, e in enumerate(embeddings):
        np.testing.assert_allclose(got.z[i, : len(e)], e, rtol=1e-3, atol=1e-3)
        assert not got.z[i, len(e) :].any()
    assert got.arrays["ids"].tolist() == [7, 8, 9]
    manifest = got.manifest
    assert (manifest["tracks"], manifest["windows"], manifest["dim"]) == (3, 5, 6)
    assert manifest["what"] == "test" and manifest["win_len"] == 20.0
    assert manifest["format"] == store.FORMAT and manifest["version"] == store.VERSION


def test_file_by_file_equals_whole(tmp_path):
    embeddings = tracks(1)
    files = []
    for i, e in enumerate(embeddings):
        files.append(str(tmp_path / f"{i}.npy"))
        np.save(files[-1], e)
    store.write_files(tmp_path / "a", files, np.load, {"what": "files"})
    store.write(tmp_path / "b", *store.stack(embeddings), {"what": "files"})
    a, b = store.read(tmp_path / "a"), store.read(tmp_path / "b")
    assert np.array_equal(a.z, b.z) and np.array_equal(a.mask, b.mask)
    with pytest.raises(store.StoreError, match="different sizes"):
        np.save(files[0], np.zeros((2, 4), np.float32))
        store.write_files(tmp_path / "c", files, np.load, {})


def test_no_manifest_no_store(tmp_path):
    store.write(tmp_path, *store.stack(tracks()), {})
    os.remove(tmp_path / store.MANIFEST)
    assert store.read(tmp_path) is None
    store.write(tmp_path, *store.stack(tracks()), {})
    # rewriting removes the manifest first: a write that stops halfway leaves no store
    store.invalidate(tmp_path)
    assert not (tmp_path / store.MANIFEST).exists() and store.read(tmp_path) is None
    # another format or version is not read as this one
    store.write(tmp_path, *store.stack(tracks()), {})
    manifest = json.loads((tmp_path / store.MANIFEST).read_text())
    (tmp_path / store.MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    assert store.read(tmp_path) is None


def test_files_that_disagree_are_an_error(tmp_path):
    store.write(tmp_path, *store.stack(tracks()), {})
    np.save(tmp_path / "mask.npy", np.zeros((2, 5), bool))
    with pytest.raises(store.StoreError, match="do not agree"):
        store.read(tmp_path)
    (tmp_path / "z.npy").write_bytes(b"not numpy")
    with pytest.raises(store.StoreError, match="unreadable embedding store"):
        store.read(tmp_path)


def test_shards_resume_and_merge_in_track_order(tmp_path):
    embeddings = tracks(2, lengths=(2, 2, 2, 2, 2))
    world = 2
    for rank in range(world):
        rows = list(range(rank, len(embeddings), world))
        shard = store.open_shard(tmp_path, rank, world, len(rows), 2, 6)
        for i, row in enumerate(rows[:1]):
            shard["z"][i], shard["mask"][i], shard["done"][i] = embeddings[row], False, True
        store.flush_shard(shard)
    with pytest.raises(store.StoreError, match="shard 0 of 2 is incomplete"):
        store.merge_shards(tmp_path, world, {})
    for rank in range(world):  # reopened: the finished rows are still there
        rows = list(range(rank, len(embeddings), world))
        shard = store.open_shard(tmp_path, rank, world, len(rows), 2, 6)
        assert shard["done"].tolist() == [True] + [False] * (len(rows) - 1)
        for i, row in enumerate(rows):
            shard["z"][i], shard["mask"][i], shard["done"][i] = embeddings[row], False, True
        store.flush_shard(shard)
    store.merge_shards(tmp_path, world, {"what": "shards"}, {"row": np.arange(5)})
    got = store.read(tmp_path)
    np.testing.assert_allclose(got.z, np.stack(embeddings), rtol=1e-3, atol=1e-3)
    assert got.arrays["row"].tolist() == list(range(5))
    assert not any(p.name.startswith("shard-") for p in tmp_path.iterdir())
