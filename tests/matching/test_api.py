"""lib/matching/api.py: the README's Python example as it is written, embedding files and arrays,
adding tracks to a live catalogue without rebuilding (atomically, with a reader querying while
another process adds), and the errors of bad requests."""

import re
import subprocess
import sys

import numpy as np
import pytest

from lib.matching import catalogue as C
from lib import synth
from lib.matching.api import Catalogue, Embedder
from lib.audio import load_audio
from lib.errors import UsageError
from lib.extract import frame_count
from tests.corpus import ROOT
from tests.matching.test_inference import tiny_checkpoint

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    path, _ = tiny_checkpoint(root, randomise=3)  # 2 s windows
    audio = root / "audio"
    synth.make_corpus(str(audio), works=6, versions=2, seconds=20, seed=3, formats=("wav", "mp3"))
    return root, path, audio


def shelf(corpus, name, works):
    """A folder with the versions of ``works`` (numbers), as a user's music folder."""
    root, _, audio = corpus
    out = root / name
    for w in works:
        for f in sorted((audio / f"work{w:03d}").iterdir()):
            (out / f.parent.name).mkdir(parents=True, exist_ok=True)
            (out / f.parent.name / f.name).write_bytes(f.read_bytes())
    return out


def test_embed_a_file_and_an_array_alike(corpus):
    _, path, audio = corpus
    model = Embedder.load(path, device="cpu")
    song = sorted((audio / "work001").glob("v0.*"))[0]
    z = model.embed(str(song), hop=1.0)
    windows = frame_count(load_audio(str(song), SR).size, 2 * SR, SR)  # 2 s every 1 s
    assert z.dtype == np.float32 and z.shape[0] == windows > 10
    x = load_audio(str(song), 44100)
    z44 = model.embed(x, samplerate=44100, hop=1.0)  # resampled to the model's rate
    assert z44.shape == z.shape and np.abs(z44 - z).max() < 0.05 * np.abs(z).max()
    with pytest.raises(UsageError, match="needs its samplerate"):
        model.embed(x)
    with pytest.raises(UsageError, match="mono"):
        model.embed(np.stack([x, x]), samplerate=44100)


def test_add_appends_without_rebuilding(corpus, tmp_path):
    _, path, _ = corpus
    model = Embedder.load(path, device="cpu")
    first, more = shelf(corpus, "first", [0, 1, 2]), shelf(corpus, "more", [3, 4])
    cat, failed = Catalogue.build(tmp_path / "cat", model, first, hop=1.0, nworkers=0)
    assert failed == [] and len(cat) == 6
    before = cat.data
    z_before = np.array(before.z)
    done = cat.add(more, nworkers=0)
    assert done["failed"] == [] and len(done["added"]) == 4 and len(cat) == 10
    after = cat.data
    assert after.generation != before.generation
    assert np.array_equal(np.asarray(after.z[:6, : z_before.shape[1]]), z_before)
    assert after.index.ntotal == int((~after.mask).sum()) == len(after.segments)
    assert after.info["kind"] == before.info["kind"]
    # the added track is found where its excerpt comes from
    song = sorted((more / "work004").glob("v1.*"))[0]
    x = load_audio(str(song), SR, 5.0, 8.0)
    best = cat.query(x, samplerate=SR, topk=3).matches[0]
    assert best.id == "work004/v1" and best.track_s[0] == pytest.approx(5.0, abs=1.0)
    assert best.is_version is None  # not calibrated: no decision
    # adding the same files again changes nothing; another file under a taken id is refused
    again = cat.add(more, nworkers=0)
    assert again["added"] == [] and len(again["already"]) == 4 and len(cat) == 10
    other = sorted((first / "work000").glob("v0.*"))[0]
    with pytest.raises(UsageError, match="already in the catalogue for other files"):
        cat.add([str(other)], ids=["work003/v0"])
    # another process sees the new state on refresh
    reader = Catalogue(tmp_path / "cat", model)
    assert len(reader) == 10 and not reader.refresh()


def test_an_add_stopped_before_publishing_leaves_the_old_catalogue(corpus, tmp_path, monkeypatch):
    _, path, _ = corpus
    model = Embedder.load(path, device="cpu")
    cat, _ = Catalogue.build(tmp_path / "cat", model, shelf(corpus, "s1", [0, 1]), nworkers=0)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cat.add(shelf(corpus, "s2", [2]), nworkers=0)
    monkeypatch.undo()
    assert len(Catalogue(tmp_path / "cat", model)) == 4  # the old one, whole
    done = cat.add(shelf(corpus, "s2", [2]), nworkers=0)  # embeddings reused, then published
    assert len(done["added"]) == 2 and len(Catalogue(tmp_path / "cat", model)) == 6
    assert len(C.generations(str(tmp_path / "cat"))) == 2  # the new one and the one before


def test_queries_during_an_add_see_the_old_or_the_new_catalogue(corpus, tmp_path):
    _, path, _ = corpus
    model = Embedder.load(path, device="cpu")
    folder = tmp_path / "cat"
    old = shelf(corpus, "old", [0, 1])
    Catalogue.build(folder, model, old, hop=1.0, nworkers=0)
    clip = load_audio(str(sorted((old / "work000").glob("v0.*"))[0]), SR)
    adds = [shelf(corpus, f"new{i}", [2 + i]) for i in range(3)]
    command = [sys.executable, "match.py", "add", f"--catalogue={folder}", "--device=cpu"]
    script = " && ".join(" ".join([*command, str(a), "--nworkers=0"]) for a in adds)
    writer = subprocess.Popen(["bash", "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    sizes = []
    while writer.poll() is None or not sizes:
        reader = Catalogue(folder, model)  # every load: one consistent state
        data = reader.data
        assert data.z.shape[0] == len(data.tracks) and data.index.ntotal == len(data.segments)
        assert reader.query(clip[: 6 * SR], samplerate=SR, topk=2).matches[0].id == "work000/v0"
        sizes.append(len(reader))
    out, _ = writer.communicate()
    assert writer.returncode == 0, out
    assert set(sizes) <= {4, 6, 8, 10} and len(set(sizes)) >= 2  # the reader saw adds land
    assert len(Catalogue(folder, model)) == 10
    assert re.search(r"8 \+ 2 = 10 tracks", out)
