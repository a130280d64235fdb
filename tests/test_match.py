"""match.py: a catalogue from a generated corpus finds where a held-out, re-encoded 20 s excerpt
comes from (track and time range), the two-stage search agrees with brute force, catalogues
from inference.py outputs, bad clips and checkpoints, and the MIREX distance matrix."""

import json
import shutil

import numpy as np
import pytest
from matplotlib import image

import inference
import match
from lib.matching import api
from lib.matching import catalogue as C
from lib import synth
from lib.audio import load_audio, write_audio
from tests.matching.test_inference import tiny_checkpoint

SR = 16000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("match")
    path, model = tiny_checkpoint(root, randomise=3)  # 2 s windows
    audio = root / "audio"
    synth.make_corpus(
        str(audio), works=5, versions=2, seconds=30, seed=6, formats=("wav", "mp3", "flac")
    )
    cat = root / "cat"
    status = match.main(
        [
            "index",
            f"--checkpoint={path}",
            f"--audio={audio}",
            f"--out={cat}",
            "--device=cpu",
            "--hop_size=1",
            "--nworkers=0",
            "--index=ivf",
            "--nlist=8",
        ]
    )
    assert status == 0
    return root, path, audio, cat


def excerpt(setup, name, start, seconds=20.0):
    """A 20 s excerpt of a catalogue track, quieter, with noise, re-encoded as mp3."""
    root, _, audio, _ = setup
    source = sorted((audio / "work002").glob(f"{name}.*"))[0]
    x = load_audio(str(source), SR)[int(start * SR) : int((start + seconds) * SR)]
    rng = np.random.default_rng(0)
    x = 0.7 * x + 0.003 * rng.standard_normal(x.size).astype(np.float32)
    clip = root / f"clip_{name}_{start:g}.mp3"
    write_audio(str(clip), x, SR)
    return clip


def as_first_version(folder):
    """Rewrite a catalogue as this project's first version wrote it: its files in the folder
    itself, no store manifest, catalogue.json version 1."""
    meta = json.loads((folder / "catalogue.json").read_text())
    generation = folder / meta.pop("generation")
    for name in ("z.npy", "mask.npy", "segments.npy", "segments.faiss"):
        shutil.move(generation / name, folder / name)
    shutil.rmtree(generation)
    meta["version"] = 1
    del meta["calibration"]
    (folder / "catalogue.json").write_text(json.dumps(meta))


def test_catalogue_files(setup):
    _, _, _, cat = setup
    loaded = C.load(str(cat))
    assert len(loaded.tracks) == 10 and loaded.info["kind"] == "IndexIVFFlat"
    assert loaded.index.ntotal == int((~loaded.mask).sum()) == len(loaded.segments)
    assert loaded.settings["win_len"] == 2.0 and loaded.settings["hop_size"] == 1.0
    ids = sorted(t["id"] for t in loaded.tracks)
    assert ids[:2] == ["work000/v0", "work000/v1"]


@pytest.mark.parametrize("start", [0.0, 6.5])
def test_query_finds_the_track_and_where(setup, tmp_path, capsys, start):
    _, _, _, cat = setup
    clip = excerpt(setup, "v1", start)
    out = tmp_path / "m.json"
    assert (
        match.main(
            ["query", f"--catalogue={cat}", str(clip), "--device=cpu", "--topk=3", f"--json={out}"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "work002/v1" in printed
    report = json.loads(out.read_text())[0]
    best = report["matches"][0]
    assert best["id"] == "work002/v1"
    # where: the whole clip, at the excerpt's start in the track, within one 2 s window: the
    # pieces repeat a one-bar motif (about 2.3 s here) on every chord, and a pitch-shift
    # invariant model cannot tell neighbouring bars apart more finely than that
    assert best["clip_s"] == [0.0, pytest.approx(20.0, abs=0.01)]
    assert abs(best["track_s"][0] - start) <= 2.0
    assert best["track_s"][1] - best["track_s"][0] == pytest.approx(20.0, abs=0.01)
    assert f"{match.clock(best['track_s'][0])}-" in printed
    assert len(best["pairs"]) == 5  # the closest window pairs, for detail


def test_exported_backends_query_alike_and_add_is_not_mixed(setup, tmp_path, capsys):
    """A catalogue built by torch answers a query run on ONNX Runtime / OpenVINO (fp32) with
    the same tracks and distances; it records torch, 32-true, and refuses to add audio
    embedded by another backend or precision."""
    _, path, audio, cat = setup
    assert C.load(str(cat)).settings["backend"] == "torch"
    assert C.load(str(cat)).settings["precision"] == "32-true"
    clip = excerpt(setup, "v0", 3.0)
    found = {}
    for backend in ("torch", "onnxruntime", "openvino"):
        out = tmp_path / f"{backend}.json"
        args = ["query", f"--catalogue={cat}", str(clip), "--device=cpu", "--topk=5"]
        assert match.main([*args, f"--backend={backend}", f"--json={out}", "--exact"]) == 0
        found[backend] = json.loads(out.read_text())[0]["matches"]
    for backend in ("onnxruntime", "openvino"):
        assert [m["id"] for m in found[backend]] == [m["id"] for m in found["torch"]]
        for got, want in zip(found[backend], found["torch"]):
            assert got["distance"] == pytest.approx(want["distance"], rel=1e-4, abs=1e-6)
    capsys.readouterr()
    new = tmp_path / "new.wav"
    write_audio(str(new), load_audio(str(sorted(audio.rglob("*.wav"))[0]), SR)[: 5 * SR], SR)
    add = ["add", str(new), f"--catalogue={cat}", "--device=cpu", "--backend=onnxruntime"]
    assert match.main(add) == 2
    err = capsys.readouterr().err
    assert "made with backend torch at precision 32-true" in err and "would mix" in err
    assert len(C.load(str(cat)).tracks) == 10


def test_two_stage_search_agrees_with_brute_force(setup):
    _, path, _, cat = setup
    loaded = C.load(str(cat))
    rng = np.random.default_rng(1)
    for row in rng.choice(len(loaded.tracks), 5, replace=False):
        valid = ~loaded.mask[row]
        query = np.asarray(loaded.z[row][valid][3:7], dtype=np.float32)
        fast = C.search(loaded, query, topk=3, nprobe=8)
        exact = C.search(loaded, query, topk=3, exact=True)
        assert [m.row for m in fast] == [m.row for m in exact]
        assert fast[0].row == row and fast[0].distance == pytest.approx(0, abs=1e-6)
        assert fast[0].offset == 3.0  # windows 3-6 of the track, 1 s hop
        assert fast[0].distance == pytest.approx(exact[0].distance)


def test_catalogue_from_inference_outputs_and_bad_inputs(setup, tmp_path, capsys):
    root, path, audio, cat = setup
    emb = tmp_path / "emb"
    assert (
        inference.main(
            [
                f"--checkpoint={path}",
                f"--path_in={audio}",
                f"--path_out={emb}",
                "--device=cpu",
                "--hop_size=1",
                "--nworkers=0",
            ]
        )
        == 0
    )
    cat2 = tmp_path / "cat2"
    assert match.main(["index", f"--embeddings={emb}", f"--out={cat2}"]) == 0
    a, b = C.load(str(cat)), C.load(str(cat2))
    assert np.array_equal(np.asarray(a.z), np.asarray(b.z)) and b.info["kind"] == "IndexFlatL2"
    assert [t["id"] for t in a.tracks] == [t["id"] for t in b.tracks]
    # a folder of .pt outputs from before the store (no store/): collected, then indexed alike
    shutil.rmtree(emb / "store")
    cat4 = tmp_path / "cat4"
    assert match.main(["index", f"--embeddings={emb}", f"--out={cat4}"]) == 0
    assert np.array_equal(np.asarray(C.load(str(cat4)).z), np.asarray(b.z))
    assert (emb / "store" / "manifest.json").is_file()
    # a catalogue of the first version (flat files, no store manifest) is still read
    as_first_version(cat4)
    assert np.array_equal(np.asarray(C.load(str(cat4)).z), np.asarray(b.z))
    # ... and moves to a generation folder when it is next written (here: a calibration)
    C.set_calibration(str(cat4), {"file": "calibration-x.npz"})
    moved = C.load(str(cat4))
    assert moved.generation is not None and moved.calibration == {"file": "calibration-x.npz"}
    assert np.array_equal(np.asarray(moved.z), np.asarray(b.z)) and not (cat4 / "z.npy").exists()
    assert moved.index.ntotal == C.load(str(cat2)).index.ntotal
    # measurements of calibrations before the previous one are removed
    names = [f"calibration-{c * 12}.npz" for c in "abc"]
    for name in names:
        (cat4 / name).write_bytes(b"measurements")
        C.set_calibration(str(cat4), {"file": name})
    assert sorted(p.name for p in cat4.glob("calibration-*")) == names[1:]
    # a corrupt clip is reported, the good one still answered, exit status 1
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"\x00" * 3000)
    clip = excerpt(setup, "v0", 2.0)
    capsys.readouterr()
    assert match.main(["query", f"--catalogue={cat2}", str(bad), str(clip), "--device=cpu"]) == 1
    captured = capsys.readouterr()
    assert "bad.mp3" in captured.err and "work002/v0" in captured.out
    # another checkpoint than the catalogue's: refused
    other, _ = tiny_checkpoint(tmp_path / "other")
    with open(other, "ab") as handle:
        handle.write(b"\0")
    assert match.main(["query", f"--catalogue={cat2}", str(clip), f"--checkpoint={other}"]) == 2
    assert "not the checkpoint" in capsys.readouterr().err
    assert match.main(["query", f"--catalogue={tmp_path}", str(clip)]) == 1  # not a catalogue
    assert match.main(["index", f"--out={tmp_path / 'c3'}"]) == 2  # neither source


def test_max_distance_says_no_version(setup, capsys):
    _, _, _, cat = setup
    clip = excerpt(setup, "v1", 0.0)
    assert (
        match.main(["query", f"--catalogue={cat}", str(clip), "--device=cpu", "--max_distance=-1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "no version found within distance -1 (--max_distance)" in out
    assert "     1" in out and "     no" in out  # the ranking is still shown, marked


def mirex(checkpoint, collection, queries, out, *extra):
    """Exit status of ``match.py mirex`` with these files and ``extra`` options."""
    files = [f"--checkpoint={checkpoint}", f"--collection={collection}", f"--queries={queries}"]
    return match.main(["mirex", *files, f"--out={out}", *extra])


def test_mirex_distance_matrix(setup, tmp_path):
    root, path, audio, _ = setup
    files = sorted(str(p) for p in audio.rglob("*.*"))
    coll, queries = tmp_path / "coll.txt", tmp_path / "q.txt"
    coll.write_text("\n".join(files) + "\n")
    queries.write_text(f"{files[3]}\n{files[0]}\n")
    out = tmp_path / "dist.txt"
    assert (
        mirex(
            path,
            coll,
            queries,
            out,
            "--device=cpu",
            "--hop_size=1",
            "--nworkers=0",
            "--name=test run",
        )
        == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "test run"
    assert lines[1:11] == [f"{i + 1}\t{f}" for i, f in enumerate(files)]
    assert lines[11] == "Q/R\t" + "\t".join(str(i) for i in range(1, 11))
    rows = [line.split("\t") for line in lines[12:]]
    assert [r[0] for r in rows] == ["4", "1"] and all(len(r) == 11 for r in rows)
    dist = np.array([[float(v) for v in r[1:]] for r in rows])
    assert dist[0].argmin() == 3 and dist[1].argmin() == 0  # each query is closest to itself
    queries.write_text(f"{tmp_path / 'elsewhere.wav'}\n")
    assert mirex(path, coll, queries, out) == 1  # listed file missing


def test_offset_prefers_the_whole_clip_in_place_over_a_shorter_repeat():
    # 6 clip windows against 12 track windows (same hop): the clip sits at track window 4 with
    # distance 0.2 per pair; a repeat of its second half at the track's start matches a bit
    # better (0.1) but only for 3 windows; every other pair is unrelated (1.0)
    dist = np.ones((6, 12))
    for i in range(6):
        dist[i, 4 + i] = 0.2
    for i in range(3, 6):
        dist[i, i - 3] = 0.1
    valid = np.arange(12)
    assert C.best_offset(dist, valid, 1.0, 1.0) == 4.0
    # a clip hanging over the track's start is still placed there when that is clearly best
    dist[:, 4:10] = 1.0
    for i in range(3, 6):
        dist[i, i - 3] = 0.0
    assert C.best_offset(dist, valid, 1.0, 1.0) == -3.0


def compare(*extra):
    return match.main(["compare", *map(str, extra), "--device=cpu"])


def test_compare_says_where_two_recordings_meet(setup, tmp_path, capsys):
    """An excerpt from 6.5 s of work002/v1 against the whole track: close, and A's 20 s line up
    at about 6.5 s of B; against another work's track: farther."""
    _, path, audio, cat = setup
    clip = excerpt(setup, "v1", 6.5)
    track = sorted((audio / "work002").glob("v1.*"))[0]
    other = sorted((audio / "work004").glob("v0.*"))[0]
    out, plot = tmp_path / "c.json", tmp_path / "c.png"
    assert compare(
        clip, track, f"--checkpoint={path}", "--hop_size=1", f"--json={out}", f"--plot={plot}"
    ) == 0
    printed = capsys.readouterr().out
    picture = image.imread(plot)  # the matrix, with the alignment drawn in its own green
    assert picture.shape[0] > 200 and picture.shape[1] > 300
    green = np.all(np.abs(picture[..., :3] - np.array([0x3D, 0xDC, 0x84]) / 255) < 0.02, axis=-1)
    assert green.sum() > 50
    same = json.loads(out.read_text())
    assert same["verdict"].startswith("no decision") and same["version"] is None
    assert same["a_s"] == [0.0, pytest.approx(20.0, abs=0.01)]
    assert abs(same["b_s"][0] - 6.5) <= 2.0 and same["b_s"][1] - same["b_s"][0] == pytest.approx(
        20.0, abs=0.01
    )
    assert same["durations_s"][0] == pytest.approx(20.0, abs=0.05) and len(same["pairs"]) == 5
    assert f"B {match.clock(same['b_s'][0])}-" in printed
    far = tmp_path / "far.json"
    assert compare(clip, other, f"--checkpoint={path}", "--hop_size=1", f"--json={far}") == 0
    assert json.loads(far.read_text())["distance"] > same["distance"]
    # the catalogue's model, windows and reduction give the same distance; a threshold decides
    between = (same["distance"] + json.loads(far.read_text())["distance"]) / 2
    decided = tmp_path / "d.json"
    assert compare(clip, track, f"--catalogue={cat}", f"--threshold={between}",
                   f"--json={decided}") == 0
    result = json.loads(decided.read_text())
    assert result["distance"] == pytest.approx(same["distance"], rel=1e-5)
    assert result["verdict"] == "versions" and result["threshold_source"] == "threshold"
    assert compare(clip, other, f"--catalogue={cat}", f"--threshold={between}") == 0
    assert "not versions" in capsys.readouterr().out


def test_picture_of_a_query_match_agrees_with_the_match(setup):
    """Catalogue.compare_track (a query result's picture) places the clip where the query did,
    from the windows the catalogue holds, at the query's distance."""
    _, _, _, cat = setup
    catalogue = api.Catalogue(cat, device="cpu")
    clip = excerpt(setup, "v1", 6.5)
    best = catalogue.query(str(clip), topk=1, exact=True).matches[0]
    embedder = catalogue.embedder
    waveform = embedder.waveform(str(clip))
    settings = catalogue.settings
    windows = embedder.embed_waveform(waveform, settings["win_len"], settings["hop_size"])
    result = catalogue.compare_track(windows, waveform.size / SR, best.row)
    assert result.distance == pytest.approx(best.distance, rel=1e-3)
    assert result.b_s[0] == pytest.approx(best.track_s[0], abs=1e-6)
    assert result.a_s == pytest.approx(best.clip_s, abs=1e-6)
    assert result.segments.shape == (len(windows), int((~catalogue.data.mask[best.row]).sum()))
    assert result.picture(("clip", best.id)).startswith(b"\x89PNG")


def test_compare_needs_a_model_and_readable_audio(setup, tmp_path, capsys):
    _, path, audio, _ = setup
    track = sorted((audio / "work002").glob("v1.*"))[0]
    assert compare(track, track) == 2
    assert "give --catalogue" in capsys.readouterr().err
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio")
    assert compare(track, broken, f"--checkpoint={path}") == 1
    assert str(broken) in capsys.readouterr().err
