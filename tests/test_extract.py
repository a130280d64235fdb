import json

import numpy as np
import pytest
import torch
from lightning.fabric import Fabric
from omegaconf import OmegaConf

import data_preproc
from lib import extract as X
from lib import synth
from lib.dataset import Dataset
from models.clews import Model
from tests.models.test_clews import tiny_conf

SR = 16000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    conf = tiny_conf()
    conf.shingling.len, conf.shingling.hop = 2.0, 1.0
    return Model(conf, sr=SR).eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    synth.make_corpus(str(root / "audio"), works=3, versions=2, seconds=5, seed=4, formats=("wav",))
    meta = root / "meta.pt"
    args = [f"--path_audio={root / 'audio'}", "--ext_in=wav", f"--fn_out={meta}", "--njobs=1"]
    assert data_preproc.main(["--dataset=folder", "--split=0,0,1", *args]) == 0
    conf = OmegaConf.create(
        {
            "samplerate": SR,
            "audiolen": 2,
            "n_per_class": 2,
            "path": {"audio": str(root / "audio"), "meta": str(meta)},
        }
    )
    return Dataset(conf, "test", fullsongs=True)


@pytest.fixture(scope="module")
def fabric():
    return Fabric(accelerator="cpu", devices=1)


def test_window_count_has_no_off_by_one():
    assert X.window_count(600, 20, 5, SR) == 117  # the original dropped the last: 116
    assert X.window_count(600, 20, 20, SR) == 30
    assert X.window_count(10, 20, 5, SR) == 1
    assert X.window_count(600, 0, 0, SR) == 1
    with pytest.raises(ValueError, match="shorter than one sample"):
        X.window_count(600, 20, 1e-6, SR)


def test_resolve_windows(model):
    assert X.resolve_windows(model) == (2.0, 1.0)
    assert X.resolve_windows(model, 3) == (3.0, 1.0)
    assert X.resolve_windows(model, -1, 7) == (0.0, 0.0)
    with pytest.raises(ValueError, match="hop must be > 0"):
        X.resolve_windows(model, 3, 0)


@pytest.mark.parametrize("seconds", [0.7, 2.0, 7.3])
def test_window_embeddings_in_chunks_equal_framing_the_whole_waveform(model, seconds):
    audio = torch.randn(int(seconds * SR))
    z = X.window_embeddings(model, audio, 2.0, 1.0, "cpu", max_windows=2)
    assert z.shape[0] == X.frame_count(audio.numel(), 2 * SR, SR)
    with torch.inference_mode():
        direct = model(audio[None], shingle_len=2.0, shingle_hop=1.0)[0]
    assert z.shape == direct.shape and torch.allclose(z, direct, atol=1e-5)


def test_embed_track_pads_and_masks(model):
    audio = torch.randn(int(4.5 * SR))
    z, mask = X.embed_track(model, audio, 2.0, 1.0, nwin=6, device="cpu", max_windows=2)
    assert z.shape == (6, 24) and mask.tolist() == [False] * 4 + [True] * 2
    assert bool((z[4:] == 0).all())
    with torch.inference_mode():
        direct = model(audio[None], shingle_len=2.0, shingle_hop=1.0)[0]
    assert torch.allclose(z[:4], direct, atol=1e-5)
    # fewer allowed windows than the track has: cut, nothing masked
    z, mask = X.embed_track(model, audio, 2.0, 1.0, nwin=2, device="cpu")
    assert z.shape == (2, 24) and not mask.any()
    z, mask = X.embed_track(model, audio, 0.0, 0.0, nwin=1, device="cpu")
    assert z.shape == (1, 24) and not mask.any()


@pytest.mark.parametrize("nsamples", [128021, 128028, 480000])
def test_whole_track_is_one_window_whatever_its_length(model, nsamples):
    # 128021 / 16000 * 16000 rounds down to 128020 samples: one sample short of the track, which
    # once framed it into two windows and broke test.py's whole-track evaluation
    assert int(nsamples / SR * SR) < nsamples or nsamples == 480000
    audio = torch.randn(nsamples)
    z = X.window_embeddings(model, audio, 0.0, 0.0, "cpu")
    assert z.shape == (1, 24)
    z, mask = X.embed_track(model, audio, 0.0, 0.0, nwin=1, device="cpu")
    assert z.shape == (1, 24) and not mask.any()


def test_cache_is_reused_resumed_and_never_stale(model, dataset, fabric, tmp_path):
    keys = list(dataset.versions)
    settings = X.settings_for(model, 2, 1, maxlen=4)
    parts = {"checkpoint": "abc", "tracks": X.tracks_digest(dataset, keys)}
    calls = []
    embed = model.embed

    def counting_embed(h):
        calls.append(h.size(1))
        return embed(h)

    model.embed = counting_embed
    try:
        first = X.embeddings_for(model, dataset, keys, settings, parts, tmp_path, fabric)
        assert len(calls) == len(keys) and first.z.dtype == torch.float16
        assert first.z.shape == (len(keys), settings.nwin, 24)
        assert first.ids.tolist() == [dataset.info[k]["id"] for k in keys]
        calls.clear()
        again = X.embeddings_for(model, dataset, keys, settings, parts, tmp_path, fabric)
        assert calls == [] and torch.equal(again.z, first.z)
        # another checkpoint: another key, extracted again
        X.embeddings_for(
            model, dataset, keys, settings, {**parts, "checkpoint": "x"}, tmp_path, fabric
        )
        assert len(calls) == len(keys)
        # a manifest written for other settings is never read for these
        key = X.cache_key({**parts, **settings.as_dict(), "cache_version": X.CACHE_VERSION})
        folder = tmp_path / key[:24]
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["key"] = "something else"
        (folder / "manifest.json").write_text(json.dumps(manifest))
        assert X.load_store(str(folder), key) is None
        # an interrupted extraction continues with the rows it had not finished
        folder = tmp_path / "resume"
        calls.clear()
        X.extract_shard(model, dataset, keys, str(folder), 0, 1, settings, "cpu")
        shard = folder / "shard-0-of-1"
        done = np.load(shard / "done.npy")
        done[2:] = False
        np.save(shard / "done.npy", done)
        calls.clear()
        X.extract_shard(model, dataset, keys, str(folder), 0, 1, settings, "cpu")
        assert len(calls) == len(keys) - 2
    finally:
        model.embed = embed


def test_audio_changes_make_the_cache_stale(dataset):
    keys = list(dataset.versions)
    before = X.tracks_digest(dataset, keys)
    path = dataset.filename[keys[0]]
    with open(path, "ab") as handle:
        handle.write(b"\x00\x00")
    assert X.tracks_digest(dataset, keys) != before


# --------------------------------------------------------------------------------------------------
# music_only: windows that lie mostly in the segments DiVers marks non-music
# --------------------------------------------------------------------------------------------------


def test_windows_mostly_in_non_music_segments():
    windows = X.Windows(slen=10.0, shop=5.0, maxlen=600.0, nwin=6, sr=16000)
    # 4 s segments 1, 2 and 3 are non-music: 4-16 s
    out = X.non_music_windows(windows, 27.0, [3, 1, 2, 2], 4.0, count=6)
    # windows 0-10 (6 s of noise: more than half), 5-15 (10 s), 10-20 (6 s), 15-25 (1 s),
    # 20-27 (none), 25-27 (none; cut at the track's end)
    assert out.tolist() == [True, True, True, False, False, False]
    # exactly half is not "mostly"
    half = X.non_music_windows(windows, 27.0, [0], 5.0, count=1)
    assert half.tolist() == [False]
    # a window past the track's end has no audio: kept (it is padding anyway)
    assert X.non_music_windows(windows, 8.0, [0, 1], 4.0, count=3).tolist() == [True, True, False]


def test_whole_track_window_and_the_mask_of_a_partition():
    whole = X.Windows(slen=0.0, shop=0.0, maxlen=20.0, nwin=1, sr=16000)
    # the first 20 s count: 12 s of noise in them
    assert X.non_music_windows(whole, 60.0, [0, 1, 2], 4.0, count=1).tolist() == [True]
    assert X.non_music_windows(whole, 60.0, [0, 1], 4.0, count=1).tolist() == [False]
    info = {
        "a": {"length": 12.0, "noise_inds_sparse": [0]},
        "b": {"length": 12.0},  # no field: all music
        "c": {"length": 12.0, "noise_inds_sparse": []},
    }
    windows = X.Windows(slen=5.0, shop=5.0, maxlen=600.0, nwin=3, sr=16000)
    mask = X.non_music_mask(info, ["a", "b", "c"], windows, 3, 5.0)
    assert mask.tolist() == [[True, False, False], [False] * 3, [False] * 3]
