"""lib/features.py and the feature datasets of data_preproc.py (Da-TACOS, Cover1000), on files
the tests write in the documented layouts (``../shared/reference/move_datacos.md`` 6.3, 6.4,
7.1): h5 files with the deepdish/PyTables root attributes, both orientations of ``crema``,
frames repeated 8 times at the 512-sample hop, a pyjama annotation file; and MOVE trained on
them with train.py and tested with test.py (the feature input path)."""

import json
import sys

import h5py
import numpy as np
import pytest

import data_preproc
from lib import features as F
from lib import preproc
from lib.audio import write_audio
from tests.corpus import run_script

RATE = F.PCP_RATE


def crema(frames, seed):
    """A pitch-class sequence (frames, 12) in [0, 1], as CREMA's."""
    return np.random.default_rng(seed).random((frames, 12)).astype(np.float32)


def write_datacos(path, pcp, work, perf, time_major=True):
    """A Da-TACOS crema h5 file: each 4096-sample frame stored 8 times (512-sample hop)."""
    stored = np.repeat(pcp, 8, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("crema", data=stored if time_major else stored.T)
        handle.attrs["label"] = work.encode()
        handle.attrs["track_id"] = perf.encode()
        handle.attrs["DEEPDISH_IO_VERSION"] = 12
        handle.attrs["PYTABLES_FORMAT_VERSION"] = b"2.1"
        handle.attrs["CLASS"] = b"GROUP"


def test_oriented_finds_the_pitch_axis():
    x = crema(40, 0)
    assert np.array_equal(F.oriented(x, "a"), x) and np.array_equal(F.oriented(x.T, "a"), x)
    for bad, reason in (
        (np.zeros((5, 7)), "found shape"),
        (np.zeros((12, 12)), "too short"),
        (np.zeros((3, 12, 4)), "found shape"),
        (np.full((20, 12), np.nan), "non-finite"),
    ):
        with pytest.raises(F.FeatureError, match=reason):
            F.oriented(bad, "file.h5")


@pytest.mark.parametrize("time_major", [True, False])
def test_datacos_files_give_moves_frames_in_either_orientation(tmp_path, time_major):
    pcp = crema(50, 1)
    path = tmp_path / "W_1_crema" / "P_2_crema.h5"
    write_datacos(path, pcp, "W_1", "P_2", time_major)
    got, work, perf = F.read_datacos(path)
    assert got.dtype == np.float32 and np.array_equal(got, pcp)  # every 8th stored frame
    assert (work, perf) == ("W_1", "P_2")


def test_unreadable_feature_files_say_which_and_why(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(F.FeatureError, match="junk.h5: not a readable h5 file"):
        F.read_datacos(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle.create_dataset("hpcp", data=crema(10, 0))
    with pytest.raises(F.FeatureError, match="no array 'crema'"):
        F.read_datacos(tmp_path / "other.h5")


def datacos_tree(root):
    """Metadata JSON and crema files: 3 works of 3 performances (one missing, one of the wrong
    shape, one too short), 2 single-performance works; per-feature and single-files layouts."""
    meta, feats = root / "meta", root / "crema"
    works = {}
    for w in range(5):
        work = f"W_{100 + w}"
        perfs = 3 if w < 3 else 1
        works[work] = {}
        for p in range(perfs):
            perf = f"P_{1000 + 10 * w + p}"
            works[work][perf] = {"perf_title": f"song {w}", "perf_artist": f"band {p}",
                                 "work_id": work, "perf_id": perf, "instrumental": "No"}
            if (w, p) == (0, 2):
                continue  # missing
            path = feats / f"{work}_crema" / f"{perf}_crema.h5"
            if w == 4:  # the single-files layout
                path = feats / work / f"{perf}.h5"
            frames = 8 if (w, p) == (1, 2) else 200  # 8 frames: 0.7 s
            write_datacos(path, crema(frames, 10 * w + p), work, perf, time_major=w != 2)
            if (w, p) == (2, 1):
                with h5py.File(path, "w") as handle:
                    handle.create_dataset("crema", data=np.zeros((100, 7), np.float32))
    meta.mkdir()
    (meta / "da-tacos_benchmark_subset_metadata.json").write_text(json.dumps(works))
    return meta, feats


def test_datacos_metadata_keeps_single_performance_works_as_candidates(tmp_path):
    meta, feats = datacos_tree(tmp_path)
    out = tmp_path / "meta.pt"
    args = ["--dataset=DaTACOS", f"--path_meta={meta}", f"--path_audio={feats}"]
    assert data_preproc.main([*args, f"--fn_out={out}", "--njobs=1"]) == 0
    info, splits = preproc.load_metadata(out)
    assert splits["train"] == {} and splits["valid"] == {}
    test = splits["test"]
    # W_100 lost P_1002 (missing), W_101 P_1012 (too short), W_102 P_1021 (shape): 2 each left;
    # the single works stay, as candidates
    assert {w: len(k) for w, k in test.items()} == {
        "W_100": 2, "W_101": 2, "W_102": 2, "W_103": 1, "W_104": 1}
    song = info["W_100/P_1000"]
    assert song["features"] == "datacos" and song["frames"] == 200
    assert song["rate"] == pytest.approx(RATE) and song["length"] == pytest.approx(200 / RATE)
    assert song["filename"] == "W_100_crema/P_1000_crema.h5" and song["artist"] == "band 0"
    assert info["W_104/P_1040"]["filename"] == "W_104/P_1040.h5"
    report = (tmp_path / "meta.rejected.tsv").read_text()
    assert "W_100/P_1002\tW_100_crema/P_1002_crema.h5\tmissing file" in report
    assert "W_101/P_1012" in report and "too short: 0.74 s" in report
    assert "W_102/P_1021" in report and "found shape (100, 7)" in report


def test_cover1000_from_the_tutorials_pyjama_and_hdf5(tmp_path):
    entries = []
    with h5py.File(tmp_path / "cover1000_feat.hdf5", "w") as handle:
        for w in range(1, 11):
            for p in range(2):
                key = str(170000 + 10 * w + p)
                handle.create_dataset(key, data=crema(150, w + p))
                entries.append({
                    "filepath": [{"value": key}],
                    "performance-id": [{"value": int(key)}],
                    "work-id": [{"value": w}],
                    "title": [{"value": f"title {w}"}],
                    "performer": [{"value": f"artist {p}"}],
                    "info": [],
                })
    pyjama = {"collection": {"descriptiondefinition": {}, "entry": entries}, "schemaversion": 1.31}
    (tmp_path / "cover1000.pyjama").write_text(json.dumps(pyjama))
    out = tmp_path / "meta.pt"
    args = ["--dataset=Cover1000", f"--path_meta={tmp_path}", f"--path_audio={tmp_path}"]
    assert data_preproc.main([*args, f"--fn_out={out}", "--split=0.6,0.2,0.2", "--njobs=1"]) == 0
    info, splits = preproc.load_metadata(out)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [6, 2, 2]
    song = info["170010"]
    assert song["features"] == "cover1000" and song["feature_key"] == "170010"
    assert song["clique"] == "1" and song["frames"] == 150 and song["title"] == "title 1"
    again = tmp_path / "again.pt"
    assert data_preproc.main([*args, f"--fn_out={again}", "--split=0.6,0.2,0.2", "--njobs=1"]) == 0
    assert preproc.load_metadata(again)[1] == splits  # the split is seeded, not hash-ordered
    with pytest.raises(SystemExit):
        data_preproc.parse_args(["--dataset=SHS100K", "--path_meta=x", "--path_audio=y",
                                 "--fn_out=z"])  # audio datasets still need --ext_in


def cover1000_tree(root, works, versions, frames):
    """The tutorial's Cover1000 packaging with ``works`` x ``versions`` performances: versions of
    a work are its pitch-class sequence transposed, re-timed and noisier, as covers are."""
    rng = np.random.default_rng(5)
    entries = []
    with h5py.File(root / "cover1000_feat.hdf5", "w") as handle:
        for w in range(works):
            theme = crema(frames, 100 + w)
            for v in range(versions):
                key = str(1000 * (w + 1) + v)
                stretch = np.linspace(0, frames - 1, int(frames * rng.uniform(0.8, 1.2)))
                pcp = np.roll(theme[stretch.astype(int)], int(rng.integers(12)), axis=1)
                pcp = np.clip(pcp + 0.2 * rng.random(pcp.shape), 0, 1).astype(np.float32)
                handle.create_dataset(key, data=pcp)
                entries.append({"filepath": [{"value": key}], "work-id": [{"value": w + 1}]})
    pyjama = {"collection": {"entry": entries}, "schemaversion": 1.31}
    (root / "cover1000.pyjama").write_text(json.dumps(pyjama))


def test_move_trains_on_cover1000_features_and_is_tested_on_datacos(tmp_path):
    # MOVE with input pcp: config/cover1000-move.yaml narrowed to 20 s patches and a 16-d
    # embedding, one epoch on the features; then test.py on the Cover1000 test works and on a
    # Da-TACOS benchmark, whose single-performance works are candidates but not queries
    cover1000_tree(tmp_path, works=10, versions=3, frames=500)
    meta = tmp_path / "cover1000.pt"
    args = ["--dataset=Cover1000", f"--path_meta={tmp_path}", f"--path_audio={tmp_path}"]
    assert data_preproc.main([*args, f"--fn_out={meta}", "--split=0.6,0.2,0.2", "--njobs=1"]) == 0
    train = [sys.executable, "train.py", "jobname=move", "conf=config/cover1000-move.yaml"]
    train += [f"path.meta={meta}", f"path.audio={tmp_path}", f"path.logs={tmp_path}"]
    train += ["data.audiolen=20", "model.shingling.len=20", "model.shingling.hop=20"]
    train += ["model.emb_size=16", "training.batchsize=2", "training.numepochs=1"]
    train += ["data.nworkers=0", "fabric.accelerator=cpu"]
    result = run_script(train)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Model move: 1,867,030 parameters" in result.stdout  # the tutorial's, 16-d
    ckpt = tmp_path / "move" / "checkpoint_last.ckpt"
    test = [sys.executable, "test.py", f"checkpoint={ckpt}", "accelerator=cpu", "nworkers=0"]
    test += ["qslen=-1", "cslen=-1", f"cache_dir={tmp_path / 'cache'}"]
    result = run_script([*test, f"out={tmp_path / 'c1000'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "c1000" / "results.json").read_text())["runs"][0]
    assert run["n_queries"] == 6 and 0 < run["MAP"]["mean"] <= 1  # 2 test works x 3
    # Da-TACOS: 3 works of 3 (one file missing, one too short, one of the wrong shape) + 2
    # single works; queries are the 6 performances with another version, 8 candidates each
    datacos_meta, feats = datacos_tree(tmp_path / "datacos")
    dmeta = tmp_path / "datacos.pt"
    args = ["--dataset=DaTACOS", f"--path_meta={datacos_meta}", f"--path_audio={feats}"]
    assert data_preproc.main([*args, f"--fn_out={dmeta}", "--njobs=1"]) == 0
    paths = [f"path_meta={dmeta}", f"path_audio={feats}", "partition=test"]
    result = run_script([*test, *paths, f"out={tmp_path / 'datacos'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "datacos" / "results.json").read_text())["runs"][0]
    assert run["n_queries"] == 6 and run["n_no_relevant"] == 2, run
    # the audio demo config refuses the feature dataset before any batch
    audio = [sys.executable, "train.py", "jobname=wrong", "conf=config/demo-move.yaml"]
    audio += [f"path.meta={meta}", f"path.audio={tmp_path}", f"path.logs={tmp_path}"]
    result = run_script([*audio, "data.nworkers=0", "fabric.accelerator=cpu"])
    assert result.returncode != 0 and "holds pitch-class features" in result.stderr
    # and the feature model refuses audio files
    song = tmp_path / "song.wav"
    write_audio(str(song), np.zeros(16000, np.float32) + 0.1, 16000)
    result = run_script([sys.executable, "inference.py", f"--checkpoint={ckpt}", f"--fn_in={song}",
                         f"--fn_out={tmp_path / 'z.pt'}", "--device=cpu"])
    assert result.returncode != 0 and "takes precomputed pitch-class features" in result.stderr
