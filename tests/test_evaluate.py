"""test.py end to end on CPU, as real subprocesses, on a CLEWS trained for one epoch on a
generated corpus: segment and track level, 1 vs 2 processes, the cache, filters, outputs and
errors. The numbers are checked against the plain definition computed here from the cached
embeddings."""

import csv
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from lib import eval as E
from lib import precision, preproc
from lib import tensor_ops as T
from lib.checkpoint import load_checkpoint, save_checkpoint
from tests.corpus import folder_corpus, run_script

SMALL = [
    "conf=config/demo-clews.yaml",
    "fabric.accelerator=cpu",
    "data.audiolen=10",
    "data.nworkers=0",
    "training.batchsize=4",
    "model.shingling.len=5",
    "model.shingling.hop=5",
    "training.numepochs=1",
]


def run(cmd):
    return run_script(cmd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    folder_corpus(root, 10, 3, 14, seed=3, split="0.4,0.2,0.4")
    audio, meta = root / "audio", root / "meta.pt"
    # cross-domain labels for the filter tests: every other version is "from DVI"
    info, splits = preproc.load_metadata(meta)
    for key, song in info.items():
        song["dvi"] = song["id"] % 2 == 0
        song["release_genres"] = ["Rock"] if song["id"] % 3 else ["Hip Hop"]
    preproc.save_metadata(str(meta), info, splits)
    paths = [f"path.audio={audio}", f"path.meta={meta}", f"path.logs={root / 'logs'}"]
    result = run([sys.executable, "train.py", "jobname=demo", *SMALL, *paths])
    assert result.returncode == 0, result.stderr[-3000:]
    return root, root / "logs" / "demo" / "checkpoint_last.ckpt"


def evaluate(ckpt, tmp_path, *extra, cache="cache", out="out"):
    cmd = [sys.executable, "test.py", f"checkpoint={ckpt}", "accelerator=cpu", "nworkers=0"]
    cmd += [f"cache_dir={tmp_path / cache}", f"out={tmp_path / out}", *extra]
    return run(cmd)


def per_query(folder):
    with open(folder / "per_query.csv") as handle:
        return list(csv.DictReader(handle))


def cached(cache):
    """The one cached embedding set under ``cache``: (cliques, ids, z, mask) tensors."""
    (folder,) = [p for p in cache.iterdir() if (p / "manifest.json").exists()]
    arrays = [np.load(folder / f"{n}.npy") for n in ("cliques", "ids", "z", "mask")]
    return [torch.from_numpy(a) for a in arrays]


def definition_aps(cliques, ids, z, mask, redux):
    """Plain per-query loop: nsqeuc segment distances in float64, distance_tensor_redux, AP.

    Without the definition's 1e-7 tie-breaking noise: after one epoch the distances are ~1e-6,
    so that noise alone would reorder candidates (the engine breaks ties deterministically)."""
    z = z.double()
    aps = []
    for i in range(len(ids)):
        dist = T.squared_euclidean(z[i][None, None], z[None]) / z.size(-1)  # (1, N, S, S)
        pair_mask = mask[i][None, None, :, None] | mask[None, :, None, :]
        track = T.distance_tensor_redux(dist, redux, mask=pair_mask, eps=0)[0]
        aps.append(E.average_precision(track, cliques == cliques[i], ids == ids[i]).item())
    return aps


def test_segment_level_same_numbers_with_one_and_two_processes(trained, tmp_path):
    _, ckpt = trained
    one = evaluate(ckpt, tmp_path, "redux=bpwr-3", cache="c1", out="o1")
    assert one.returncode == 0, one.stderr[-3000:]
    two = evaluate(ckpt, tmp_path, "redux=bpwr-3", "ngpus=2", cache="c2", out="o2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "extracting 12 tracks" in one.stdout and "extracting 12 tracks" in two.stdout
    rows1, rows2 = per_query(tmp_path / "o1"), per_query(tmp_path / "o2")
    assert len(rows1) == 12 and rows1 == rows2  # every query once, identical metrics
    res1 = json.loads((tmp_path / "o1" / "results.json").read_text())["runs"][0]
    res2 = json.loads((tmp_path / "o2" / "results.json").read_text())["runs"][0]
    assert res1["MAP"] == res2["MAP"] and res1["n_queries"] == 12
    assert res1["n_candidates"] == 12 and res1["query"]["nwin"] == 1 + (600 - 5) // 5
    # the printed block carries the same numbers
    assert f"MAP = {res1['MAP']['mean']:5.3f}" in one.stdout
    assert "Avg -->" in one.stdout and "c.i. ->" in one.stdout
    # and they are the definition's
    cliques, ids, z, mask = cached(tmp_path / "c1")
    want = definition_aps(cliques, ids, z, mask, "bpwr-3")
    got = [float(r["AP"]) for r in rows1]
    assert np.allclose(got, want, atol=1e-6)
    assert all(int(r["n_candidates"]) == 11 and int(r["n_relevant"]) == 2 for r in rows1)


def test_track_level_and_cache_reuse(trained, tmp_path):
    _, ckpt = trained
    first = evaluate(ckpt, tmp_path, "qslen=-1", "cslen=-1", "redux=min")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "whole track" in first.stdout and "extracting" in first.stdout
    cliques, ids, z, mask = cached(tmp_path / "cache")
    assert z.shape[1] == 1 and z.dtype == torch.float16 and not mask.any()
    want = definition_aps(cliques, ids, z, mask, "min")
    assert np.allclose([float(r["AP"]) for r in per_query(tmp_path / "out")], want, atol=1e-6)
    # another reduction: no extraction, the cached embeddings are the ones it needs
    again = evaluate(ckpt, tmp_path, "qslen=-1", "cslen=-1", "redux=mean", out="out2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "from the cache" in again.stdout and "extracting" not in again.stdout
    # bf16: its own embeddings (another cache entry) where the CPU computes bf16 natively, with
    # nearly the 32-bit scores; a clear usage error on a CPU that would only emulate it
    mixed = evaluate(
        ckpt, tmp_path, "qslen=-1", "cslen=-1", "redux=min", "precision=bf16", out="out3"
    )
    if not precision.cpu_has_native_bf16():
        assert mixed.returncode == 2 and "no native bf16" in mixed.stderr
    else:
        assert mixed.returncode == 0, mixed.stderr[-3000:]
        assert "extracting" in mixed.stdout
        aps = [float(r["AP"]) for r in per_query(tmp_path / "out3")]
        assert abs(np.mean(aps) - np.mean(want)) < 0.05
    # other weights under the same file name: the cache is stale and must not be used
    state = load_checkpoint(ckpt)
    state["model"] = {
        k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()
    }
    changed = tmp_path / "changed" / "checkpoint.ckpt"
    changed.parent.mkdir()
    shutil.copy(ckpt.parent / "configuration.yaml", changed.parent / "configuration.yaml")
    save_checkpoint(state, str(changed))
    other = evaluate(changed, tmp_path, "qslen=-1", "cslen=-1", "redux=mean", out="out3")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "extracting" in other.stdout


def partition_ids(root):
    info, splits = preproc.load_metadata(root / "meta.pt")
    return [info[k]["id"] for versions in splits["test"].values() for k in versions]


def test_several_query_lengths_and_filters(trained, tmp_path):
    root, ckpt = trained
    ids = partition_ids(root)
    result = evaluate(ckpt, tmp_path, "qslen=[3,6]", "qshop=100", "qfilter=dvi:True")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["query"]["slen"] for r in results["runs"]] == [3.0, 6.0]
    assert all(r["query"]["nwin"] == 1 + (600 - r["query"]["slen"]) // 100 for r in results["runs"])
    png = (tmp_path / "out" / "map_vs_query_length.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rows = per_query(tmp_path / "out")
    even = sum(1 for i in ids if i % 2 == 0)
    assert len(rows) == 2 * even and all(int(r["song_id"]) % 2 == 0 for r in rows)
    assert results["runs"][0]["n_candidates"] == 12
    # a hop per length: windows back to back
    paired = evaluate(ckpt, tmp_path, "qslen=[3,6]", "qshop=[3,6]", out="paired")
    assert paired.returncode == 0, paired.stderr[-3000:]
    runs = json.loads((tmp_path / "paired" / "results.json").read_text())["runs"]
    assert [(r["query"]["slen"], r["query"]["shop"]) for r in runs] == [(3.0, 3.0), (6.0, 6.0)]
    assert [r["query"]["nwin"] for r in runs] == [200, 100]
    # quoted label, candidate filter
    quoted = evaluate(ckpt, tmp_path, "cfilter=release_genres:~'Hip Hop'", out="q")
    assert quoted.returncode == 0, quoted.stderr[-3000:]
    runs = json.loads((tmp_path / "q" / "results.json").read_text())["runs"]
    assert len(per_query(tmp_path / "q")) == len(ids) == 12  # every track queries
    assert runs[0]["n_candidates"] == sum(1 for i in ids if i % 3 != 0)


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["qfilter=genre:Rock"], 2, "unknown domain 'genre'"),
        (["qfilter=release_genres:Jazz"], 2, "unknown label 'Jazz'"),
        (["qfilter=release_genres:(Rock"], 2, "missing ')'"),
        (["redux=bpwx-2"], 2, "redux='bpwx-2' is not a reduction (min, "),
        (["redux=bpwx-2"], 2, "; did you mean bpwr-2?"),
        (["qslen=5", "qshop=0"], 2, "hop must be > 0"),
        (["qslen=[3,6]", "qshop=[3,6,9]"], 2, "one per query length (3 hops for 2 lengths)"),
        (["qslem=5"], 2, "did you mean 'qslen'"),
        (["partition=tset"], 2, "partition='tset' is not one of"),
        (["precision=64"], 2, "precision=64 is not one of 32, bf16, 16"),
    ],
)
def test_bad_arguments_are_clear_errors(trained, tmp_path, extra, code, message):
    _, ckpt = trained
    result = evaluate(ckpt, tmp_path, *extra)
    assert result.returncode == code, result.stderr[-2000:]
    assert message in result.stderr


def test_missing_checkpoint_and_unreadable_audio(trained, tmp_path):
    root, ckpt = trained
    missing = evaluate(tmp_path / "nope.ckpt", tmp_path)
    assert missing.returncode == 1 and "nope.ckpt" in missing.stderr
    audio = tmp_path / "audio"
    shutil.copytree(root / "audio", audio)
    info, splits = preproc.load_metadata(root / "meta.pt")
    first_test_version = next(iter(splits["test"].values()))[0]
    victim = audio / info[first_test_version]["filename"]
    victim.write_bytes(b"RIFF" + b"\x00" * 10)
    broken = evaluate(ckpt, tmp_path, f"path_audio={audio}")
    assert broken.returncode == 1
    assert victim.name in broken.stderr


def load_test_script():
    """test.py as a module (its name would otherwise be taken by Python's own ``test`` package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_script", "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_windows_are_the_originals_20_s_every_5_s():
    """No window arguments: the training shingle length (20 s for CLEWS) every 5 s, at most 117
    windows of a 600 s track, for queries and candidates, as the original's test.py."""
    from lib.extract import describe_windows, settings_for
    from models.clews import Model
    from tests.models.test_clews import tiny_conf

    script = load_test_script()
    args = script.parse_args(["checkpoint=x.ckpt"])
    model = Model(tiny_conf(), sr=16000)
    assert model.get_shingle_params() == (20.0, 20.0)
    for slen, shop in ((args.qslen, args.qshop), (args.cslen, args.cshop)):
        settings = settings_for(model, slen, shop, args.maxlen)
        assert (settings.slen, settings.shop, settings.nwin) == (20.0, 5.0, 117)
        assert describe_windows(settings) == "20 s / 5 s hop, <= 117 windows"
    # the training hop is still there on request, and whole tracks
    args = script.parse_args(["checkpoint=x.ckpt", "qshop=null", "cslen=-1"])
    assert settings_for(model, args.qslen, args.qshop, args.maxlen).shop == 20.0
    assert settings_for(model, args.cslen, args.cshop, args.maxlen).slen == 0.0


def with_title_tags(root, tmp_path):
    """A copy of the corpus metadata whose tracks have YouTube-title tags, as DVI2's: "live" on
    even song ids, "cover" and "piano" on the others, "cover" alone on multiples of 3."""
    info, splits = preproc.load_metadata(root / "meta.pt")
    for song in info.values():
        if song["id"] % 2 == 0:
            song["tags_yt_title"] = ["live"]
        else:
            song["tags_yt_title"] = ["cover"] if song["id"] % 3 == 0 else ["cover", "piano"]
    path = tmp_path / "tagged.pt"
    preproc.save_metadata(str(path), info, splits)
    return path


def sweep_rows(folder):
    with open(folder / "sweep" / "sweep.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_sweep_of_the_forks_tag_filters_is_one_table(trained, tmp_path):
    root, ckpt = trained
    meta = with_title_tags(root, tmp_path)
    common = [f"path_meta={meta}", "qfilter=dvi:True", "redux=bpwr-3"]
    result = evaluate(ckpt, tmp_path, *common, "sweep_cfilters=fork_tags", out="sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("extracting 12 tracks") == 1  # one extraction for 20 filters
    rows = sweep_rows(tmp_path / "sweep")
    assert [r["candidate filter"] for r in rows][:3] == [
        "tags_yt_title:acoustic",
        "tags_yt_title:instrumental|karaoke",
        "tags_yt_title:live",
    ]
    assert len(rows) == 20
    by_filter = {r["candidate filter"]: r for r in rows}
    assert "unknown label 'acoustic'" in by_filter["tags_yt_title:acoustic"]["note"]
    evaluated = [r for r in rows if r["MAP"]]
    assert {r["candidate filter"] for r in evaluated} == {
        f"tags_yt_title:{tag}" for tag in ("live", "cover", "cover&piano")
    }
    # each row is what test.py gives for that filter alone (from the cache this time)
    for tag in ("live", "cover&piano"):
        alone = evaluate(ckpt, tmp_path, *common, f"cfilter=tags_yt_title:{tag}", out=tag)
        assert alone.returncode == 0, alone.stderr[-3000:]
        assert "from the cache" in alone.stdout and "extracting" not in alone.stdout
        run = json.loads((tmp_path / tag / "results.json").read_text())["runs"][0]
        row = by_filter[f"tags_yt_title:{tag}"]
        assert float(row["MAP"]) == pytest.approx(run["MAP"]["mean"])
        assert float(row["MAP_ci"]) == pytest.approx(run["MAP"]["ci95"])
        assert int(row["queries"]) == run["n_queries"]
        assert int(row["candidates"]) == run["n_candidates"]
    table = (tmp_path / "sweep" / "sweep" / "sweep.md").read_text()
    assert "| `tags_yt_title:cover&piano` | 5 s | " in table
    assert (tmp_path / "sweep" / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_of_metadata_files_is_one_table(trained, tmp_path):
    root, ckpt = trained
    info, splits = preproc.load_metadata(root / "meta.pt")
    cliques = sorted(splits["test"])
    files = []
    for i, part in enumerate((cliques[:2], cliques[2:])):
        strata = dict(splits, test={c: splits["test"][c] for c in part})
        path = tmp_path / "strata" / f"dvi2_stratum_{i}.pt"
        path.parent.mkdir(exist_ok=True)
        preproc.save_metadata(str(path), info, strata)
        files.append(path)
    pattern = f"sweep_metas={tmp_path / 'strata' / '*.pt'}"
    result = evaluate(ckpt, tmp_path, pattern, "qslen=-1", "cslen=-1", out="strata_out")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sweep_rows(tmp_path / "strata_out")
    assert [r["metadata file"] for r in rows] == [str(f) for f in files]
    assert [int(r["queries"]) for r in rows] == [3 * 2, 3 * (len(cliques) - 2)]
    for path, row in zip(files, rows):
        alone = evaluate(
            ckpt, tmp_path, f"path_meta={path}", "qslen=-1", "cslen=-1", out=path.stem
        )
        assert alone.returncode == 0, alone.stderr[-3000:]
        run = json.loads((tmp_path / path.stem / "results.json").read_text())["runs"][0]
        assert float(row["MAP"]) == pytest.approx(run["MAP"]["mean"])
    both = evaluate(
        ckpt, tmp_path, pattern, "sweep_cfilters=fork_tags", out="both"
    )
    assert both.returncode == 2 and "one sweep at a time" in both.stderr
