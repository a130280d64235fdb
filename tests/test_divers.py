"""DiVers (the published DVI2) end to end, as a user runs it: a fake release in the documented
layout (tests.corpus.divers_release) through data_preproc.py, train.py and test.py with a tag
filter, the fork's tag sweep and music_only, as real subprocesses on CPU."""

import csv
import json
import sys

import numpy as np
import pytest

from lib import extract as X
from lib import preproc
from tests.corpus import DIVERS_NOISE_SEGMENT, divers_release, run_script
from tests.test_evaluate import SMALL, cached, definition_aps, per_query


@pytest.fixture(scope="module")
def divers(tmp_path_factory):
    root = tmp_path_factory.mktemp("divers")
    release, audio = divers_release(root, works=10, versions=3, seconds=14.0, test_works=4)
    meta = root / "divers.pt"
    args = [f"--path_meta={release}", f"--path_audio={audio}", "--ext_in=wav", f"--fn_out={meta}"]
    made = run_script([sys.executable, "data_preproc.py", "--dataset=DiVers", *args])
    assert made.returncode == 0, made.stderr[-3000:]
    paths = [f"path.audio={audio}", f"path.meta={meta}", f"path.logs={root / 'logs'}"]
    trained = run_script([sys.executable, "train.py", "jobname=divers", *SMALL, *paths])
    assert trained.returncode == 0, trained.stderr[-3000:]
    return root, meta, root / "logs" / "divers" / "checkpoint_last.ckpt"


def evaluate(ckpt, tmp_path, *extra, out="out"):
    cmd = [sys.executable, "test.py", f"checkpoint={ckpt}", "accelerator=cpu", "nworkers=0"]
    cmd += [f"cache_dir={tmp_path / 'cache'}", f"out={tmp_path / out}", *extra]
    return run_script(cmd)


def results(folder):
    return json.loads((folder / "results.json").read_text())["runs"]


def test_tag_filter_on_the_release_labels(divers, tmp_path):
    _, meta, ckpt = divers
    info, splits = preproc.load_metadata(meta)
    test = [k for keys in splits["test"].values() for k in keys]
    covers = [k for k in test if "cover" in info[k].get("tags_yt_title", [])]
    assert 0 < len(covers) < len(test)
    run = evaluate(ckpt, tmp_path, "qslen=-1", "cslen=-1", "cfilter=tags_yt_title:cover")
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = results(tmp_path / "out")
    assert result["n_candidates"] == len(covers)


def test_fork_tag_sweep_equals_single_filter_runs(divers, tmp_path):
    _, _, ckpt = divers
    common = ["qslen=-1", "cslen=-1", "qfilter=dvi:True"]
    sweep = evaluate(ckpt, tmp_path, *common, "sweep_cfilters=fork_tags", out="sweep")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    with open(tmp_path / "sweep" / "sweep" / "sweep.csv") as handle:
        rows = {r["candidate filter"]: r for r in csv.DictReader(handle)}
    assert len(rows) == 20
    evaluated = {name for name, row in rows.items() if row["MAP"]}
    tags = ("acoustic", "cover", "cover&guitar", "cover&piano")
    assert evaluated == {f"tags_yt_title:{tag}" for tag in tags}
    assert all(rows[name]["note"] for name in set(rows) - evaluated)  # said, not skipped
    for name in ("tags_yt_title:cover", "tags_yt_title:cover&guitar"):
        alone = evaluate(ckpt, tmp_path, *common, f"cfilter={name}", out=name.split(":")[1])
        assert alone.returncode == 0, alone.stderr[-3000:]
        (result,) = results(tmp_path / name.split(":")[1])
        assert float(rows[name]["MAP"]) == pytest.approx(result["MAP"]["mean"])
        assert int(rows[name]["queries"]) == result["n_queries"]
        assert int(rows[name]["candidates"]) == result["n_candidates"]


def test_music_only_leaves_out_the_non_music_windows(divers, tmp_path):
    _, meta, ckpt = divers
    windows = ["qslen=5", "qshop=5", "cslen=5", "cshop=5", "redux=min"]
    plain = evaluate(ckpt, tmp_path, *windows, out="plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    segment = f"noise_segment_seconds={DIVERS_NOISE_SEGMENT:g}"
    music = evaluate(ckpt, tmp_path, *windows, "music_only=true", segment, out="music")
    assert music.returncode == 0, music.stderr[-3000:]
    # the first 5 s window of every YouTube version (8 of the 12 test tracks) is non-music
    (result,) = results(tmp_path / "music")
    info, splits = preproc.load_metadata(meta)
    test = [k for keys in splits["test"].values() for k in keys]
    youtube = [k for k in test if info[k]["noise_inds_sparse"]]
    assert len(youtube) == 8
    stats = result["music_only"]
    assert stats["queries"]["left_out"] == stats["candidates"]["left_out"] == 8
    assert stats["queries"]["tracks_left_out"] == 0
    assert stats["queries"]["windows"] == sum(
        X.frame_count(int(info[k]["length"] * 16000), 5 * 16000, 5 * 16000) for k in test
    )
    assert "music_only: left out 8 of" in music.stdout
    # the numbers are the definition's with those windows masked
    cliques, ids, z, mask = cached(tmp_path / "cache")
    key_of = {info[k]["id"]: k for k in test}
    wins = X.Windows(5.0, 5.0, 600.0, z.size(1), 16000)
    keys = [key_of[int(i)] for i in ids]
    left_out = X.non_music_mask(info, keys, wins, z.size(1), DIVERS_NOISE_SEGMENT)
    want = definition_aps(cliques, ids, z, mask | left_out, "min")
    got = {int(r["song_id"]): float(r["AP"]) for r in per_query(tmp_path / "music")}
    assert np.allclose([got[int(i)] for i in ids], want, atol=1e-6)
    assert int((left_out & ~mask).sum()) == 8
    assert "music_only" not in results(tmp_path / "plain")[0]
    assert "music_only: left out" not in plain.stdout


def test_music_only_needs_the_segment_length(divers, tmp_path):
    _, _, ckpt = divers
    run = evaluate(ckpt, tmp_path, "music_only=true")
    assert run.returncode == 2
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert "noise_segment_seconds" in line and "does not document" in line


def test_stratified_sweep_over_divers_metadata_files(divers, tmp_path):
    """The fork's stratified evaluation: one metadata file per stratum (here the test works in
    two halves), one table whose rows are the single runs on each file."""
    _, meta, ckpt = divers
    info, splits = preproc.load_metadata(meta)
    cliques = sorted(splits["test"])
    files = []
    for i, part in enumerate((cliques[:2], cliques[2:])):
        path = tmp_path / "strata" / f"divers_stratum_{i}.pt"
        path.parent.mkdir(exist_ok=True)
        stratum = dict(splits, test={c: splits["test"][c] for c in part})
        preproc.save_metadata(str(path), info, stratum)
        files.append(path)
    pattern = f"sweep_metas={tmp_path / 'strata' / '*.pt'}"
    sweep = evaluate(ckpt, tmp_path, pattern, "qslen=-1", "cslen=-1", out="strata")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    with open(tmp_path / "strata" / "sweep" / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["metadata file"] for r in rows] == [str(f) for f in files]
    for path, row in zip(files, rows):
        track_level = ["qslen=-1", "cslen=-1"]
        alone = evaluate(ckpt, tmp_path, f"path_meta={path}", *track_level, out=path.stem)
        assert alone.returncode == 0, alone.stderr[-3000:]
        (result,) = results(tmp_path / path.stem)
        assert float(row["MAP"]) == pytest.approx(result["MAP"]["mean"])
        assert int(row["queries"]) == result["n_queries"] == 6
