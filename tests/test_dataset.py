import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import data_preproc
from lib import preproc
from lib.audio import write_audio
from lib.dataset import Dataset

SR = 16000
RAMP_SLOPE = 0.02  # amplitude per second: the value of a sample tells its time in the file


def ramp(seconds, rate):
    return (np.arange(int(seconds * rate)) / rate * RAMP_SLOPE).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Folder corpus: 6 works with 2-4 versions of 6-40 s, wav at 16 and 44.1 kHz, one mp3."""
    root = tmp_path_factory.mktemp("corpus")
    audio = root / "audio"
    lengths = [[30, 40], [12, 20, 25], [6, 30], [40, 35, 20, 10], [25, 25], [30, 8]]
    for w, versions in enumerate(lengths):
        for v, seconds in enumerate(versions):
            rate = 44100 if v % 2 else SR
            write_audio(audio / f"work{w}" / f"v{v}.wav", ramp(seconds, rate), rate)
    fn_out = root / "meta.pt"
    assert (
        data_preproc.main(
            [
                "--dataset=folder",
                f"--path_audio={audio}",
                "--ext_in=wav",
                f"--fn_out={fn_out}",
                "--split=0.5,0.17,0.33",
                "--njobs=1",
            ]
        )
        == 0
    )
    return root


def data_conf(corpus, **over):
    conf = OmegaConf.create(
        {
            "samplerate": SR,
            "audiolen": 5,
            "maxlen": None,
            "pad_mode": "repeat",
            "n_per_class": 4,
            "p_samesong": 0,
            "path": {"audio": str(corpus / "audio"), "meta": str(corpus / "meta.pt")},
        }
    )
    return OmegaConf.merge(conf, over)


def start_of(x):
    return x[0].item() / RAMP_SLOPE


def test_items_shapes_ids_and_versions(corpus):
    dset = Dataset(data_conf(corpus), "train", augment=True)
    info, splits = preproc.load_metadata(corpus / "meta.pt")
    assert len(dset) == sum(len(v) for v in splits["train"].values())
    for idx in range(len(dset)):
        item = dset[idx]
        assert len(item) == 1 + 2 * 4
        clique_id, ids, audio = item[0], item[1::2], item[2::2]
        assert all(x.shape == (5 * SR,) and x.dtype == torch.float32 for x in audio)
        anchor = dset.versions[idx]
        assert ids[0] == info[anchor]["id"]
        clique = info[anchor]["clique"]
        assert clique_id == list(splits["train"]).index(clique)
        clique_ids = {info[k]["id"] for k in splits["train"][clique]}
        assert set(ids) <= clique_ids
        others = ids[1:]
        assert ids[0] not in others  # p_samesong = 0
        if len(clique_ids) > 2:
            assert len(set(others)) == min(3, len(clique_ids) - 1)


def test_clique_id_offsets(corpus):
    conf = data_conf(corpus)
    _, splits = preproc.load_metadata(corpus / "meta.pt")
    ntrain, nvalid = len(splits["train"]), len(splits["valid"])
    assert Dataset(conf, "valid")[0][0] == ntrain
    assert Dataset(conf, "test")[0][0] == ntrain + nvalid


def test_random_start_within_the_file_and_maxlen(corpus):
    torch.manual_seed(0)
    dset = Dataset(data_conf(corpus, maxlen=20), "train", augment=True)
    starts = []
    for _ in range(6):
        for idx, key in enumerate(dset.versions):
            x = dset.load(key)
            duration = dset.info[key]["length"]
            start = start_of(x)
            if duration >= 5:
                # the excerpt really starts where the ramp says, at the right rate
                assert start <= max(0.0, min(duration, 20) - 5) + 0.01
                expected = start + np.arange(5 * SR) / SR
                np.testing.assert_allclose(x.numpy() / RAMP_SLOPE, expected, atol=0.01)
            starts.append(start)
    assert len({round(s, 2) for s in starts}) > 10  # random, not always 0
    plain = Dataset(data_conf(corpus), "train", augment=False)
    assert all(abs(start_of(plain.load(k))) < 0.01 for k in plain.versions)


def test_short_versions_are_padded(corpus):
    conf = data_conf(corpus, audiolen=10)
    dset = Dataset(conf, "train")
    all_keys = {
        **Dataset(conf, "valid").filename,
        **Dataset(conf, "test").filename,
        **dset.filename,
    }
    short = [k for k in all_keys if dset.info[k]["length"] < 10]
    assert short
    key = short[0]
    split = next(s for s in preproc.SPLITS if key in Dataset(conf, s).filename)
    x = Dataset(conf, split).load(key)
    n = round(dset.info[key]["length"] * SR)
    assert x.shape == (10 * SR,)
    torch.testing.assert_close(x[n : 2 * n][: 10 * SR - n], x[: 10 * SR - n])  # repeat padding
    zeros = Dataset(data_conf(corpus, audiolen=10, pad_mode="zeros"), split).load(key)
    assert torch.all(zeros[n + 1 :] == 0)


def test_fullsongs(corpus):
    dset = Dataset(data_conf(corpus), "test", fullsongs=True)
    item = dset[0]
    assert len(item) == 3
    key = dset.versions[0]
    assert abs(item[2].shape[0] - round(dset.info[key]["length"] * SR)) <= 1


def test_dataloader_collates_batches(corpus):
    dset = Dataset(data_conf(corpus, audiolen=2), "train", augment=True)
    loader = torch.utils.data.DataLoader(dset, batch_size=3, num_workers=2, shuffle=True)
    batch = next(iter(loader))
    assert len(batch) == 9
    assert batch[0].shape == (3,) and batch[1].dtype == torch.long and batch[2].shape == (3, 2 * SR)


def test_invalid_split_and_bad_cliques(corpus, tmp_path):
    with pytest.raises(ValueError, match="invalid split 'validation'"):
        Dataset(data_conf(corpus), "validation")
    info, splits = preproc.load_metadata(corpus / "meta.pt")
    key = next(iter(splits["train"].values()))[0]
    splits["train"]["lonely"] = [key]
    torch.save({"info": info, "split": splits}, tmp_path / "bad.pt")
    conf = data_conf(corpus)
    conf.path.meta = str(tmp_path / "bad.pt")
    with pytest.raises(preproc.DatasetError, match="clique lonely: 1 version"):
        Dataset(conf, "train")
    splits["valid"] = {}
    torch.save({"info": info, "split": splits}, tmp_path / "empty.pt")
    conf.path.meta = str(tmp_path / "empty.pt")
    with pytest.raises(preproc.DatasetError, match="split 'valid' has no cliques"):
        Dataset(conf, "valid")


def test_limit_cliques_and_bare_version_ids(corpus, tmp_path):
    assert len(Dataset(data_conf(corpus), "train", limit_cliques=1).cliques) == 1
    # the fork's metadata may list bare version ids inside a clique
    info, splits = preproc.load_metadata(corpus / "meta.pt")
    prefixed = {}
    for key, song in info.items():
        prefixed[f"{song['clique']}:{song['version']}"] = song
    bare = {
        s: {c: [info[k]["version"] for k in keys] for c, keys in cl.items()}
        for s, cl in splits.items()
    }
    torch.save([prefixed, bare], tmp_path / "bare.pt")
    conf = data_conf(corpus)
    conf.path.meta = str(tmp_path / "bare.pt")
    dset = Dataset(conf, "train")
    assert dset.versions[0].count(":") == 1 and len(dset[0]) == 9


def test_p_samesong_lets_the_anchor_be_another_version(corpus):
    torch.manual_seed(0)
    never = Dataset(data_conf(corpus, p_samesong=0), "train", augment=True)
    always = Dataset(data_conf(corpus, p_samesong=1), "train", augment=True)
    anchor = never.versions[0]
    assert anchor not in never._other_versions(anchor, never.clique_of[anchor])
    assert anchor in always._other_versions(anchor, always.clique_of[anchor])


def test_unreadable_files_are_reported_once_and_replaced_by_other_versions(
    corpus, tmp_path, capsys
):
    import shutil

    from lib.dataset import BadAudioLog

    shutil.copytree(corpus / "audio", tmp_path / "audio")
    conf = data_conf(corpus, path={"audio": str(tmp_path / "audio")})
    probe = Dataset(conf, "train")
    clique = max(probe.cliques, key=lambda c: len(probe.cliques[c]))
    gone, broken, *kept = probe.cliques[clique]
    assert kept
    (tmp_path / "audio" / probe.info[gone]["filename"]).unlink()  # deleted after preprocessing
    (tmp_path / "audio" / probe.info[broken]["filename"]).write_bytes(b"RIFF" + bytes(40))
    with pytest.raises(preproc.DatasetError, match="1 audio file.* missing: .*" + gone):
        Dataset(conf, "train")  # without a log: an error naming the file, before any work
    log = BadAudioLog(tmp_path / "run" / "bad_audio.tsv")
    dset = Dataset(conf, "train", augment=True, bad_audio=log)
    assert "1 audio file(s) of split 'train' missing" in capsys.readouterr().err
    ids = {dset.info[k]["id"] for k in kept}
    for _ in range(2):
        for anchor in (gone, broken):
            item = dset[dset.versions.index(anchor)]
            assert set(item[1::2]) <= ids and all(x.abs().max() > 0 for x in item[2::2])
    err = capsys.readouterr().err
    assert err.count(probe.filename[broken]) == 1 and "another version of clique" in err
    rows = (tmp_path / "run" / "bad_audio.tsv").read_text().splitlines()
    assert rows[0] == "file\treason\tclique"
    assert rows[1] == f"{probe.filename[gone]}\tfile not found\t{clique}"
    assert rows[2].startswith(f"{probe.filename[broken]}\tnot a readable") and len(rows) == 3
    # a new process (a resumed run, another DataLoader worker) does not report them again
    again = Dataset(conf, "train", augment=True, bad_audio=log)
    again[again.versions.index(broken)]
    assert probe.filename[broken] not in capsys.readouterr().err
    # nothing left to read in the clique: an error, not an endless search
    for key in kept:
        (tmp_path / "audio" / probe.info[key]["filename"]).write_bytes(b"not audio")
    dset = Dataset(conf, "train", augment=True, bad_audio=log)
    with pytest.raises(preproc.DatasetError, match=f"every version of clique {clique} is"):
        dset[dset.versions.index(kept[0])]


def test_missing_clique_or_audio_folder_is_an_error_before_any_work(corpus, tmp_path):
    from lib.dataset import BadAudioLog

    log = BadAudioLog(tmp_path / "bad_audio.tsv")
    conf = data_conf(corpus, path={"audio": str(tmp_path / "nowhere")})
    with pytest.raises(preproc.DatasetError, match="none of the .* exists .* check path.audio"):
        Dataset(conf, "train", bad_audio=log)
    import shutil

    shutil.copytree(corpus / "audio", tmp_path / "audio")
    conf = data_conf(corpus, path={"audio": str(tmp_path / "audio")})
    dset = Dataset(conf, "train")
    clique = next(iter(dset.cliques))
    for key in dset.cliques[clique]:
        (tmp_path / "audio" / dset.info[key]["filename"]).unlink()
    with pytest.raises(preproc.DatasetError, match=f"every version of clique {clique} is missing"):
        Dataset(conf, "train", bad_audio=log)


@pytest.mark.parametrize("maxlen", [None, 12])
def test_decoded_cache_gives_the_same_items(corpus, tmp_path, maxlen):
    """Same seed, same excerpts (up to float16), with the audio decoded once into path.cache
    (with maxlen, only the part excerpts come from)."""
    paths = {"audio": str(corpus / "audio"), "meta": str(corpus / "meta.pt")}
    plain = data_conf(corpus, maxlen=maxlen)
    cached = data_conf(
        corpus, maxlen=maxlen, decoded_cache=True, path={**paths, "cache": str(tmp_path)}
    )
    items = {}
    for name, conf in (("plain", plain), ("cached", cached)):
        torch.manual_seed(3)
        dset = Dataset(conf, "train", augment=True)
        items[name] = [dset[i] for i in range(len(dset))] + [dset[0]]
    assert len(list((tmp_path / f"decoded-{SR}hz").rglob("*.npy"))) == len(dset)
    for plain, cached in zip(items["plain"], items["cached"]):
        assert plain[:2] == cached[:2] and plain[1::2] == cached[1::2]
        for x, y in zip(plain[2::2], cached[2::2]):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-3)


def test_decoded_cache_shared_by_dataloader_workers(corpus, tmp_path):
    paths = {"audio": str(corpus / "audio"), "meta": str(corpus / "meta.pt")}
    paths["cache"] = str(tmp_path)
    dset = Dataset(data_conf(corpus, audiolen=2, decoded_cache=True, path=paths), "train", True)
    loader = torch.utils.data.DataLoader(dset, batch_size=2, num_workers=2, shuffle=True)
    for _ in range(2):
        assert sum(len(batch[0]) for batch in loader) == len(dset)
    folder = tmp_path / f"decoded-{SR}hz"
    assert len(list(folder.rglob("*.npy"))) == len(dset)
    assert not list(folder.rglob("*.tmp"))  # every worker's write completed or was replaced


def test_label_budget_keeps_whole_cliques_nested_by_fraction():
    from lib.config import ConfigError
    from lib.dataset import label_budget

    cliques = {f"w{i:02d}": [f"w{i:02d}/v{j}" for j in range(2 + i % 3)] for i in range(20)}
    cliques["solo"] = ["solo/v0"]  # one version: never a labelled clique
    tenth = label_budget(cliques, 0.1, seed=3)
    assert len(tenth) == 2 and "solo" not in tenth
    assert all(tenth[c] == cliques[c] for c in tenth)  # every version of each
    assert label_budget(cliques, 0.1, seed=3) == tenth  # the seed decides
    assert any(set(label_budget(cliques, 0.1, seed=s)) != set(tenth) for s in range(4, 9))
    half = label_budget(cliques, 0.5, seed=3)
    assert len(half) == 10 and set(tenth) <= set(half)
    assert list(half) == [c for c in cliques if c in half]  # the split's order
    assert len(label_budget(cliques, 1.0, seed=3)) == 20
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="label_fraction"):
            label_budget(cliques, bad, seed=3)


def test_label_fraction_cuts_the_train_split_only(corpus):
    full = Dataset(data_conf(corpus), "train")
    cut = Dataset(data_conf(corpus, label_fraction=0.5, label_seed=1), "train")
    assert len(full.cliques) == 3 and len(cut.cliques) == 2
    assert all(cut.cliques[c] == full.cliques[c] for c in cut.cliques)
    assert len(cut) == sum(len(v) for v in cut.cliques.values())
    valid = Dataset(data_conf(corpus, label_fraction=0.5, label_seed=1), "valid")
    assert valid.cliques == Dataset(data_conf(corpus), "valid").cliques
