import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import data_preproc
from lib import preproc
from lib.audio import write_audio
from lib.dataset import Dataset
from lib.filters import DomainIndex
from tests.corpus import divers_release

ROOT = Path(__file__).resolve().parents[1]


def make_audio(path, seconds=3.0, seed=0, rate=16000):
    x = np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1
    write_audio(path, x, rate)


def read_report(fn_out):
    with open(preproc.report_path(str(fn_out)), newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def run_cli(args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "data_preproc.py", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


# --------------------------------------------------------------------------------------------------
# DVI2 / Discogs-VI
# --------------------------------------------------------------------------------------------------


def make_dvi2(root, ext="m4a", valid_name="valid"):
    meta, audio = root / "meta", root / "audio"
    meta.mkdir(parents=True)
    splits = {
        "train": {
            "C-0000001": [  # three versions, one corrupt -> two remain
                {"version_id": "V-1", "youtube_id": "aaAAA1", "track_title": "Song One"},
                {"version_id": "V-2", "youtube_id": "abBBB2", "track_title": "Song One (live)"},
                {"version_id": "V-3", "youtube_id": "acCCC3", "track_title": None},
            ],
            "C-0000002_1": [  # suffixed clique id; DVI2-FM style: version_id == youtube_id
                {"version_id": "ddDDD4", "youtube_id": "ddDDD4", "track_title": None},
                {"version_id": "deEEE5", "youtube_id": "deEEE5", "track_title": None},
            ],
            "C-0000003": [  # one version missing on disk -> clique dropped
                {"version_id": "V-6", "youtube_id": "ffFFF6", "track_title": "Three"},
                {"version_id": "V-7", "youtube_id": "fgGGG7", "track_title": "Three"},
            ],
        },
        valid_name: {
            "C-0000004": [
                {"version_id": "V-8", "youtube_id": "hhHHH8", "track_title": "Four"},
                {"version_id": "V-9", "youtube_id": "hiIII9", "track_title": "Four"},
                {"version_id": "V-10", "track_title": "no youtube id"},
            ],
        },
        "test": {
            "C-0000005": [
                {
                    "version_id": "V-11",
                    "youtube_id": "jjJJ11",
                    "track_title": "Five",
                    "release_genres": {"discogs": {"Rock": 1}},
                    "dvi": True,
                },
                {
                    "version_id": "V-12",
                    "youtube_id": "JkKK12",
                    "track_title": "Five",
                },  # stored as jk/
            ],
        },
    }
    for split, cliques in splits.items():
        (meta / f"{split}.json").write_text(json.dumps(cliques))
    for seed, yt in enumerate(
        ["aaAAA1", "abBBB2", "ddDDD4", "deEEE5", "ffFFF6", "hhHHH8", "hiIII9", "jjJJ11"]
    ):
        make_audio(audio / yt[:2] / f"{yt}.{ext}", seed=seed)
    make_audio(audio / "jk" / f"JkKK12.{ext}", seed=20)  # folder spelled in lower case
    (audio / "ac").mkdir()
    (audio / "ac" / f"acCCC3.{ext}").write_bytes(b"\x00\x00\x00\x18ftypM4A garbage" * 40)
    (audio / "aa" / "aaAAA1.meta").write_text(
        json.dumps({"artist": "Band A", "title": "Song One!"})
    )
    return meta, audio


@pytest.mark.parametrize("njobs", [1, 2, -1])
def test_dvi2(tmp_path, njobs):
    meta, audio = make_dvi2(tmp_path)
    fn_out = tmp_path / "cache" / "metadata-dvi2.pt"
    assert (
        data_preproc.main(
            [
                "--dataset=DVI2",
                f"--path_meta={meta}",
                f"--path_audio={audio}/",
                "--ext_in=mp4/".replace("mp4", "m4a"),
                f"--fn_out={fn_out}",
                f"--njobs={njobs}",
            ]
        )
        == 0
    )
    info, splits = preproc.load_metadata(fn_out)
    assert splits["train"] == {
        "C-0000001": ["C-0000001:V-1", "C-0000001:V-2"],
        "C-0000002_1": ["C-0000002_1:ddDDD4", "C-0000002_1:deEEE5"],
    }
    assert splits["valid"] == {"C-0000004": ["C-0000004:V-8", "C-0000004:V-9"]}
    assert splits["test"] == {"C-0000005": ["C-0000005:V-11", "C-0000005:V-12"]}
    song = info["C-0000001:V-1"]
    assert (
        song["filename"] == "aa/aaAAA1.m4a"
        and song["artist"] == "Band A"
        and song["title"] == "Song One!"
    )
    assert (
        song["samplerate"] == 16000 and song["channels"] == 1 and abs(song["length"] - 3.0) < 0.05
    )
    assert (
        info["C-0000001:V-2"]["title"] == "Song One (live)"
        and info["C-0000001:V-2"]["artist"] is None
    )
    assert info["C-0000005:V-12"]["filename"] == "jk/JkKK12.m4a"
    # cross-domain fields of richer releases are kept for test.py's filters
    assert info["C-0000005:V-11"]["release_genres"] == {"discogs": {"Rock": 1}}
    assert info["C-0000005:V-11"]["dvi"] is True and "dvi" not in info["C-0000005:V-12"]
    assert len({s["id"] for s in info.values()}) == len(info)
    reasons = {row["key"]: row["reason"] for row in read_report(fn_out)}
    assert reasons["C-0000001:V-3"].startswith("undecodable")
    assert reasons["C-0000003:V-7"] == "missing file"
    assert reasons["C-0000003:V-6"] == "clique C-0000003 left with 1 version(s) in train"
    assert reasons["C-0000004:V-10"].startswith("no metadata")
    assert len(reasons) == 4
    # plain data only: a bare weights-only load reads it
    assert set(torch.load(fn_out, weights_only=True)) == {"info", "split", "about"}
    if njobs == 1:  # the dataset reads it: 2 s excerpts of 3 s m4a files, anchor + 3 versions
        conf = OmegaConf.create(
            {
                "samplerate": 16000,
                "audiolen": 2,
                "maxlen": None,
                "pad_mode": "repeat",
                "n_per_class": 4,
                "p_samesong": 0,
                "path": {"audio": str(audio), "meta": str(fn_out)},
            }
        )
        item = Dataset(conf, "train", augment=True)[0]
        assert len(item) == 9 and all(x.shape == (32000,) for x in item[2::2])


def test_dvi2_old_val_spelling_and_discogs_vi_light_names(tmp_path):
    meta, audio = make_dvi2(tmp_path, valid_name="val")
    fn_out = tmp_path / "m.pt"
    assert (
        data_preproc.main(
            [
                "--dataset=DiscogsVI2",
                f"--path_meta={meta}",
                f"--path_audio={audio}",
                "--ext_in=.m4a",
                f"--fn_out={fn_out}",
                "--njobs=1",
            ]
        )
        == 0
    )
    assert list(preproc.load_metadata(fn_out)[1]["valid"]) == ["C-0000004"]
    for i, (split, suffix) in enumerate([("train", "train"), ("val", "val"), ("test", "test")]):
        stem = preproc.DISCOGS_VI_STEMS[i % 2]  # mix both spellings of the release's file names
        os.rename(meta / f"{split}.json", meta / f"{stem}.{suffix}")
    assert (
        data_preproc.main(
            [
                "--dataset=DiscogsVI",
                f"--path_meta={meta}",
                f"--path_audio={audio}",
                "--ext_in=m4a",
                f"--fn_out={fn_out}",
                "--njobs=1",
            ]
        )
        == 0
    )
    info, splits = preproc.load_metadata(fn_out)
    assert sum(len(v) for s in splits.values() for v in s.values()) == 8


def test_missing_split_file_is_an_error_with_exit_status(tmp_path):
    meta, audio = make_dvi2(tmp_path)
    (meta / "test.json").unlink()
    run = run_cli(
        [
            "--dataset=DVI2",
            f"--path_meta={meta}",
            f"--path_audio={audio}",
            "--ext_in=m4a",
            f"--fn_out={tmp_path / 'out.pt'}",
        ]
    )
    assert run.returncode == 1
    assert f"{meta / 'test.json'}: file not found" in run.stderr
    assert not (tmp_path / "out.pt").exists()
    run = run_cli(["--dataset=DVI2", f"--path_audio={audio}", "--ext_in=m4a", "--fn_out=x.pt"])
    assert run.returncode == 2 and "--path_meta is required" in run.stderr


# --------------------------------------------------------------------------------------------------
# SHS100K, covers80, folder
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# DiVers (the published DVI2): nested JSON, one file per subset and size
# --------------------------------------------------------------------------------------------------


def divers_preproc(path, audio, fn_out, ext="wav"):
    args = [f"--path_meta={path}", f"--path_audio={audio}", f"--ext_in={ext}", f"--fn_out={fn_out}"]
    return data_preproc.main(["--dataset=DiVers", "--njobs=1", *args])


@pytest.fixture(scope="module")
def divers_full(tmp_path_factory):
    return divers_release(tmp_path_factory.mktemp("divers"), works=5, versions=4, seconds=4.0)


def test_divers_full_release_keeps_every_field_typed(divers_full, tmp_path):
    path, audio = divers_full
    release = json.loads(path.read_text())
    assert divers_preproc(path, audio, tmp_path / "divers.pt") == 0
    info, splits = preproc.load_metadata(tmp_path / "divers.pt")
    assert [len(splits[s]) for s in preproc.SPLITS] == [1, 1, 3]
    assert sum(len(v) for c in splits.values() for v in c.values()) == 20
    for split, cliques in release.items():
        for clique, versions in cliques.items():
            assert splits[split][clique] == [f"{clique}:{v}" for v in versions]
            for version, fields in versions.items():
                song = info[f"{clique}:{version}"]
                assert song["version"] == version and song["clique"] == clique
                # the user's audio, found from the authors' absolute .mp4 path
                yt = fields["youtube_id"]
                assert song["filename"] == f"{yt[:2]}/{yt}.wav"
                assert song["divers_filename"] == fields["filename"]
                assert song["divers_id"] == fields["id"]
                assert song["artist"] == fields["artist"] and song["title"] == fields["title"]
                for name, value in fields.items():
                    if name in ("id", "filename", "artist", "title"):
                        continue
                    if value is None:
                        assert name not in song, name  # null stays absent
                    else:
                        assert song[name] == value and type(song[name]) is type(value), name
    # both kinds of version id: Discogs-VI's and a YouTube id
    assert "C-0000001:V-0000001" in info and "C-0000001:aByt00001" in info
    assert info["C-0000001:V-0000001"]["dvi"] is True
    assert info["C-0000001:aByt00001"]["release_artist_names"] == []  # empty list stays a list
    assert info["C-0000001:aByt00001"]["noise_inds_sparse"] == [0]
    assert "title" in info["C-0000001:aDyt00003"] and info["C-0000001:aDyt00003"]["title"] is None
    assert read_report(tmp_path / "divers.pt") == []


def test_divers_fields_are_filter_domains(divers_full, tmp_path):
    path, audio = divers_full
    assert divers_preproc(path, audio, tmp_path / "divers.pt") == 0
    info, _ = preproc.load_metadata(tmp_path / "divers.pt")
    keys = sorted(info)
    index = DomainIndex(info, keys)
    expected = [k for k in keys if "cover" in (info[k].get("tags_yt_title") or [])]
    assert 0 < len(expected) < len(keys)
    assert [k for k, keep in zip(keys, index.select("tags_yt_title:cover")) if keep] == expected
    punk = [k for k, keep in zip(keys, index.select("release_styles:Punk ; dvi:True")) if keep]
    assert punk == [k for k in keys if info[k]["release_styles"] and info[k]["dvi"]]
    assert punk  # the [genre, style] pairs give their style
    writers = index.select("track_writer_names:'Writer 0'")
    assert [k for k, keep in zip(keys, writers) if keep] == [k for k in keys if "C-0000001" in k]


def test_divers_light_release(tmp_path):
    path, audio = divers_release(
        tmp_path, works=4, versions=2, seconds=4.0, light=True, test_works=2
    )
    assert path.name == "divers_light.json"
    assert divers_preproc(path, audio, tmp_path / "light.pt") == 0
    info, splits = preproc.load_metadata(tmp_path / "light.pt")
    assert [len(splits[s]) for s in preproc.SPLITS] == [1, 1, 2]
    song = info["C-0000001:aByt00001"]
    assert song["filename"] == "aB/aByt00001.wav"  # no filename field: the YouTube layout
    own = {"id", "clique", "version", "artist", "title", "filename"}
    own |= {"samplerate", "length", "channels"}
    assert set(song) == own | {"divers_id", "youtube_id", "dvi", "tags_yt_title"}


def test_divers_missing_audio_and_a_clique_left_with_one_version(tmp_path):
    path, audio = divers_release(tmp_path, works=4, versions=2, seconds=4.0, test_works=2)
    (audio / "cA" / "cAyt00200.wav").unlink()  # test work 2 keeps one version
    assert divers_preproc(path, audio, tmp_path / "d.pt") == 0
    _, splits = preproc.load_metadata(tmp_path / "d.pt")
    assert list(splits["test"]) == ["C-0000004"]
    rows = {row["key"]: row for row in read_report(tmp_path / "d.pt")}
    assert rows["C-0000003:V-0000005"]["reason"] == "missing file"
    # the release's path under the user's root
    assert rows["C-0000003:V-0000005"]["filename"] == "cA/cAyt00200.mp4"
    assert "left with 1 version" in rows["C-0000003:cByt00201"]["reason"]


def test_divers_audio_at_the_release_filename(tmp_path):
    audio = tmp_path / "audio"
    for name in ("mine/one.mp3", "two.mp3"):
        make_audio(audio / name, seed=len(name))
    versions = {
        "V-0000001": {"id": "V-0000001", "youtube_id": None, "filename": "mine/one.wav"},
        "xyYOUTUBE1": {"id": "xyYOUTUBE1", "filename": None, "youtube_id": None},
        "V-0000002": {"youtube_id": None, "filename": "two.mp3", "tags_yt_title": []},
        "V-0000003": {"youtube_id": None, "filename": None},
    }
    release = {"test": {"C-0000001": versions}}
    path = tmp_path / "yvi_small.json"
    path.write_text(json.dumps(release))
    make_audio(audio / "xy" / "xyYOUTUBE1.mp3", seed=5)  # a YouTube id as the version id
    assert divers_preproc(path, audio, tmp_path / "y.pt", ext="mp3") == 0
    info, splits = preproc.load_metadata(tmp_path / "y.pt")
    filenames = [info[k]["filename"] for k in splits["test"]["C-0000001"]]
    assert filenames == ["mine/one.mp3", "xy/xyYOUTUBE1.mp3", "two.mp3"]
    (row,) = read_report(tmp_path / "y.pt")
    assert row["key"] == "C-0000001:V-0000003"
    assert "neither filename nor youtube_id" in row["reason"]


@pytest.mark.parametrize(
    "content, message",
    [
        ([], "expected an object"),
        ({"training": {}}, "train / valid / test at the top, found 'training'"),
        ({"test": {"C-1": [{"version_id": "V-1"}]}}, "test/C-1 is not an object of versions"),
        ({"test": {"C-1": {"V-1": "x"}}}, "test/C-1/V-1: expected an object of fields"),
    ],
)
def test_divers_malformed_file_names_the_file_and_the_place(tmp_path, content, message):
    path = tmp_path / "divers.json"
    path.write_text(json.dumps(content))
    args = [f"--path_meta={path}", f"--path_audio={tmp_path}", f"--fn_out={tmp_path / 'x.pt'}"]
    run = run_cli(["--dataset=DiVers", "--ext_in=mp4", *args])
    assert run.returncode != 0
    assert str(path) in run.stderr and message in run.stderr, run.stderr
    assert not (tmp_path / "x.pt").exists()


def test_shs100k(tmp_path):
    meta, audio = tmp_path / "meta", tmp_path / "audio"
    meta.mkdir()
    rows = [
        ("8110", "0", "Title A", "Artist 1"),
        ("8110", "1", "Title A", "Artist 2"),
        ("8110", "2", "Title A", "Artist 3"),
        ("92", "0", "Title B", "Artist 4"),
        ("92", "5", "Title B", "Artist 5"),
        ("77", "0", "Title C", "Artist 6"),
        ("77", "1", "Title C", "Artist 7"),
    ]
    (meta / "list").write_text(
        "".join(f"{c}\t{v}\t{t}\t{a}\thttps://youtube/x\tok\n" for c, v, t, a in rows)
    )
    (meta / "SHS100K-TRAIN").write_text("8110\t2\n8110\t0\n8110\t1\n8110\t0\n92\t0\n92\t5\n")
    (meta / "SHS100K-VAL").write_text("77\t0\n77\t1\n")
    (meta / "SHS100K-TEST").write_text("77\t0\n77\t9\n")  # 77-9 is not in the list file
    for seed, (c, v, *_) in enumerate(rows):
        key = f"{c}-{v}"
        if key != "92-5":  # missing on disk
            make_audio(audio / key[:2] / f"{key}.mp3", seed=seed)
    fn_out = tmp_path / "shs.pt"
    assert (
        data_preproc.main(
            [
                "--dataset=SHS100K",
                f"--path_meta={meta}",
                f"--path_audio={audio}",
                "--ext_in=mp3",
                f"--fn_out={fn_out}",
                "--njobs=2",
            ]
        )
        == 0
    )
    info, splits = preproc.load_metadata(fn_out)
    assert splits["train"] == {"8110": ["8110-0", "8110-1", "8110-2"]}
    assert splits["valid"] == {"77": ["77-0", "77-1"]} and splits["test"] == {}
    assert info["8110-1"]["filename"] == "81/8110-1.mp3" and info["8110-1"]["artist"] == "Artist 2"
    assert info["77-1"]["id"] == 6  # row index in the list file
    reasons = {row["key"]: row["reason"] for row in read_report(fn_out)}
    assert reasons["92-5"] == "missing file" and reasons["77-9"].startswith("no metadata")
    assert reasons["92-0"].startswith("clique 92 left with 1")


def test_shs100k_malformed_row(tmp_path):
    (tmp_path / "list").write_text("1\t0\tTitle\n")
    with pytest.raises(preproc.DatasetError, match=r"list:1: expected at least 4"):
        preproc.parse_shs100k(str(tmp_path), str(tmp_path), "mp3")


def test_covers80(tmp_path):
    meta, audio = tmp_path / "meta", tmp_path / "audio"
    meta.mkdir()
    works = {
        "A_Song": ["artist_x+album+01-A_Song", "artist_y+album2+05-A_Song"],
        "B_Song": ["artist_z+rec+02-B_Song", "artist_w+rec+03-B_Song"],
    }
    (meta / "list1.list").write_text("".join(f"{w}/{v[0]}\n" for w, v in works.items()))
    (meta / "list2.list").write_text("".join(f"{w}/{v[1]}\n" for w, v in works.items()))
    for seed, (w, versions) in enumerate(works.items()):
        for j, v in enumerate(versions):
            make_audio(audio / w / f"{v}.wav", seed=seed * 2 + j)
    fn_out = tmp_path / "c80.pt"
    assert (
        data_preproc.main(
            [
                "--dataset=covers80",
                f"--path_meta={meta}",
                f"--path_audio={audio}",
                "--ext_in=wav",
                f"--fn_out={fn_out}",
                "--njobs=1",
            ]
        )
        == 0
    )
    info, splits = preproc.load_metadata(fn_out)
    assert splits["train"] == splits["valid"] == splits["test"]
    assert splits["test"]["A_Song"] == [
        "A_Song/artist_x+album+01-A_Song",
        "A_Song/artist_y+album2+05-A_Song",
    ]
    song = info["A_Song/artist_x+album+01-A_Song"]
    assert song["artist"] == "artist_x" and song["title"] == "A_Song"


def make_folder(root, nworks=10, nversions=3, ext="wav"):
    for w in range(nworks):
        for v in range(nversions):
            make_audio(root / f"work{w:02d}" / f"version{v}.{ext}", seconds=1.5, seed=w * 10 + v)


def test_folder_split_is_seeded_by_work(tmp_path):
    make_folder(tmp_path / "audio")
    out1, out2, out3 = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    args = ["--dataset=folder", f"--path_audio={tmp_path / 'audio'}", "--ext_in=wav", "--njobs=1"]
    assert data_preproc.main(args + [f"--fn_out={out1}", "--split=0.6,0.2,0.2"]) == 0
    assert data_preproc.main(args + [f"--fn_out={out2}", "--split=0.6,0.2,0.2"]) == 0
    _, s1 = preproc.load_metadata(out1)
    _, s2 = preproc.load_metadata(out2)
    assert s1 == s2
    assert [len(s1[s]) for s in preproc.SPLITS] == [6, 2, 2]
    works = [set(s1[s]) for s in preproc.SPLITS]
    assert not (works[0] & works[1]) and not (works[0] & works[2]) and not (works[1] & works[2])
    assert all(len(v) == 3 for s in s1.values() for v in s.values())
    assert data_preproc.main(args + [f"--fn_out={out3}", "--split=test", "--seed=1"]) == 0
    _, s3 = preproc.load_metadata(out3)
    assert len(s3["test"]) == 10 and not s3["train"] and not s3["valid"]


def test_check_modes_and_too_short(tmp_path):
    make_audio(tmp_path / "ok.wav", seconds=3)
    make_audio(tmp_path / "short.wav", seconds=0.5)
    good = tmp_path / "ok.mp3"
    make_audio(good, seconds=30)
    (tmp_path / "cut.mp3").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    assert preproc.check_audio(str(tmp_path / "ok.wav"))[0]["length"] == pytest.approx(3.0)
    assert preproc.check_audio(str(tmp_path / "short.wav"))[1].startswith("too short")
    assert preproc.check_audio(str(tmp_path / "ok.mp3"), mode="full")[1] is None
    # the probe near the declared end catches a truncated download, in both modes
    assert preproc.check_audio(str(tmp_path / "cut.mp3"))[1].startswith("undecodable")
    assert preproc.check_audio(str(tmp_path / "cut.mp3"), mode="full")[1].startswith("undecodable")
    assert preproc.check_audio(str(tmp_path / "nope.wav")) == (None, "missing file")


def test_check_rejects_silent_files_but_not_silent_passages(tmp_path):
    rate = 16000
    write_audio(tmp_path / "silence.wav", np.zeros(20 * rate, np.float32), rate)
    for mode in ("quick", "full"):
        assert preproc.check_audio(str(tmp_path / "silence.wav"), mode)[1].startswith("silent")
    # music only between the quick probes (start, middle, end): quick decodes it all to be sure
    x = np.zeros(20 * rate, np.float32)
    x[4 * rate : 6 * rate] = 0.1
    write_audio(tmp_path / "gap.wav", x, rate)
    for mode in ("quick", "full"):
        assert preproc.check_audio(str(tmp_path / "gap.wav"), mode)[1] is None
    # silent start and end (intro, fade-out) with music in the middle passes both
    x = np.zeros(20 * rate, np.float32)
    x[3 * rate : 17 * rate] = 0.1
    write_audio(tmp_path / "fades.wav", x, rate)
    for mode in ("quick", "full"):
        assert preproc.check_audio(str(tmp_path / "fades.wav"), mode)[1] is None


def test_extension_cleaning():
    assert preproc.clean_extension("mp4/") == "mp4"
    assert preproc.clean_extension("..m4a") == "m4a"
    with pytest.raises(ValueError):
        preproc.clean_extension("/")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_metadata_accepts_the_original_list_and_refuses_pickles(tmp_path):
    info = {"a": {"id": 0}}
    splits = {"train": {"c": ["a"]}, "valid": {}, "test": {}}
    torch.save([info, splits], tmp_path / "orig.pt")
    assert preproc.load_metadata(tmp_path / "orig.pt") == (info, splits)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"info": os.system}))
    with pytest.raises(preproc.DatasetError, match="refused"):
        preproc.load_metadata(tmp_path / "evil.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(preproc.DatasetError, match="expected"):
        preproc.load_metadata(tmp_path / "other.pt")
