"""lib/matching/calibration.py:
the false-alarm rate of a catalogue size from measured distances (hand
cases and brute force), and a calibration on a generated corpus whose threshold gives about
the target false-alarm rate on clips of works that are not in the catalogue."""

import itertools
import json
import math
import re

import numpy as np
import pytest

import match
from lib.matching import calibration as K
from lib.matching import catalogue as C
from lib import store, synth, tensor_ops
from lib.matching.api import Catalogue
from lib.audio import get_info, load_audio
from lib.metadata import save_metadata
from tests.matching.test_inference import tiny_checkpoint

SR = 16000


def test_false_alarm_rate_hand_cases():
    # one clip, non-version distances 1..4; threshold 2.5 leaves a = 2 of n = 4 above it
    nonversion, counts = K.pad_sorted([np.array([3.0, 1.0, 4.0, 2.0])])
    assert K.false_alarm_rate(nonversion, counts, 1, 2.5) == pytest.approx(0.5)
    # C(2, 2) / C(4, 2) = 1 / 6 of the pairs have no distance within
    assert K.false_alarm_rate(nonversion, counts, 2, 2.5) == pytest.approx(1 - 1 / 6)
    assert K.false_alarm_rate(nonversion, counts, 4, 2.5) == pytest.approx(1.0)
    # more tracks than measured: drawn with replacement, 1 - (2/4)^5
    assert K.false_alarm_rate(nonversion, counts, 5, 2.5) == pytest.approx(1 - 0.5**5)
    assert K.false_alarm_rate(nonversion, counts, 3, 0.5) == 0.0
    # two clips of different lengths: the mean of their rates
    nonversion, counts = K.pad_sorted([np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0])])
    assert counts.tolist() == [3, 2] and np.isinf(nonversion[1, 2])
    assert K.false_alarm_rate(nonversion, counts, 2, 2.5) == pytest.approx((1 + 0) / 2)
    assert K.false_alarm_rate(nonversion, counts, 1, 1.5) == pytest.approx((1 / 3 + 0) / 2)


def test_none_within_is_the_chance_over_every_subset():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, 7)
    for size, threshold in [(1, 0.3), (3, 0.5), (5, 0.2), (7, 0.9)]:
        subsets = list(itertools.combinations(values, size))
        brute = np.mean([min(s) > threshold for s in subsets])
        above = int((values > threshold).sum())
        assert K.none_within([above], [7], size)[0] == pytest.approx(brute)


def test_threshold_is_the_largest_distance_within_the_target():
    rng = np.random.default_rng(1)
    rows = [rng.normal(2.0, 0.3, rng.integers(20, 40)) for _ in range(50)]
    nonversion, counts = K.pad_sorted(rows)
    for size in (1, 10, 30):
        d = K.threshold_for(nonversion, counts, size, 0.05)
        assert K.false_alarm_rate(nonversion, counts, size, d) <= 0.05
        above = np.sort(np.unique(nonversion[np.isfinite(nonversion)]))
        following = above[above > d][0]
        assert K.false_alarm_rate(nonversion, counts, size, following) > 0.05
    # a larger catalogue holds closer non-versions: a lower threshold for the same rate
    assert K.threshold_for(nonversion, counts, 30, 0.05) < K.threshold_for(
        nonversion, counts, 1, 0.05
    )
    assert K.threshold_for(nonversion, counts, 10, 0.0) == -math.inf or (
        K.false_alarm_rate(nonversion, counts, 10, K.threshold_for(nonversion, counts, 10, 0.0))
        == 0.0
    )
    assert K.recall_at([0.5, 1.5, np.inf, 3.0], 2.0) == pytest.approx(2 / 3)


def test_measure_leaves_the_clips_own_track_out():
    cliques = ["a", "a", "b", "c"]
    table = {0: np.array([0.0, 1.0, 2.0, 3.0]), 2: np.array([5.0, 6.0, 0.0, 4.0])}
    clips = [(0, 0), (2, 2)]  # (track, a key standing for its windows)
    nonversion, counts, true = K.measure(cliques, clips, lambda key: table[key])
    assert true[0] == 1.0 and np.isinf(true[1])  # "b" has no other version
    assert counts.tolist() == [2, 3]
    assert nonversion[0, :2].tolist() == [2.0, 3.0] and nonversion[1].tolist() == [4.0, 5.0, 6.0]


###################################################################################################
# On a generated corpus, as a user would
###################################################################################################

WORKS, VERSIONS, SECONDS, CLIP = 240, 2, 10, 6.0
LABELLED, CATALOGUED, HELD_OUT = range(0, 100), range(100, 170), range(170, 240)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """240 works x 2 versions of 10 s: works 0-99 labelled (a metadata file), 100-169 in a
    catalogue, 170-239 never seen (their clips have no version in the catalogue). Many small
    works: a false-alarm rate varies with the works more than with the clips of a work."""
    root = tmp_path_factory.mktemp("calibration")
    # 2 s windows; a quarter of the CQT's cost (40 ms frames, half-length kernels): the test
    # embeds about 1,200 tracks and clips, and tells no version apart that needs finer ones
    path, _ = tiny_checkpoint(root, randomise=3, cqt={"hoplen": 0.04, "fscale": 0.5})
    audio = root / "audio"
    synth.make_corpus(
        str(audio), WORKS, VERSIONS, SECONDS, seed=11, formats=("wav",), njobs=2
    )
    files = {w: sorted((audio / f"work{w:03d}").glob("*.wav")) for w in range(WORKS)}
    info = {
        f"w{w}v{v}": {"clique": f"w{w}", "filename": str(f.relative_to(audio))}
        for w in LABELLED
        for v, f in enumerate(files[w])
    }
    splits = {"valid": {f"w{w}": [f"w{w}v{v}" for v in range(VERSIONS)] for w in LABELLED}}
    meta = root / "meta.pt"
    save_metadata(str(meta), info, splits)
    shelf = root / "shelf"
    for w in CATALOGUED:
        for f in files[w]:
            (shelf / f.parent.name).mkdir(parents=True, exist_ok=True)
            (shelf / f.parent.name / f.name).write_bytes(f.read_bytes())
    cat = root / "cat"
    index = ["index", f"--checkpoint={path}", f"--audio={shelf}", f"--out={cat}"]
    assert match.main([*index, "--device=cpu", "--hop_size=1", "--nworkers=0"]) == 0
    return root, path, audio, meta, cat, files


def test_calibrated_threshold_keeps_the_false_alarm_rate_on_unseen_works(corpus, capsys):
    root, _, audio, meta, cat, files = corpus
    plot = root / "calibration.png"
    args = ["calibrate", f"--catalogue={cat}", f"--meta={meta}", f"--audio={audio}"]
    args += ["--false_alarm=0.1", f"--clip_len={CLIP:g}", "--clips_per_track=2", "--device=cpu"]
    assert match.main([*args, "--nworkers=0", f"--plot={plot}"]) == 0
    out = capsys.readouterr().out
    print(out)
    clips = int(re.search(r"on (\d+) clips of 6 s from 200 labelled tracks", out).group(1))
    assert 300 < clips <= 400 and "10% false alarms" in out  # 2 per track, 1 if too short
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((cat / "catalogue.json").read_text())["calibration"]
    assert stored["catalogue_tracks"] == 140 and stored["target_false_alarm"] == 0.1
    assert (cat / stored["file"]).is_file()

    catalogue = Catalogue(cat)
    decision = catalogue.decision
    assert decision.threshold == stored["threshold"] and not decision.extrapolated()
    model = catalogue.embedder
    redux = tensor_ops.parse_redux(catalogue.settings["redux"])

    # one clip per track of the 140 works outside the labelled set, drawn like the calibration's,
    # and its distance to each of their 280 tracks (the catalogue's own embeddings for its part)
    pool = [f for w in (*CATALOGUED, *HELD_OUT) for f in files[w]]
    shelved = np.asarray(catalogue.data.z[:, :, :], dtype=np.float32)
    embedded = [shelved[i][~catalogue.data.mask[i]] for i in range(len(catalogue))]
    embedded += [model.embed(str(f), hop=1.0) for f in pool[len(catalogue) :]]
    ids = [f"{f.parent.name}/{f.stem}" for f in pool[: len(catalogue)]]
    assert [t["id"] for t in catalogue.tracks] == ids
    z, mask = store.stack(embedded)
    tracks = C.CatalogueState("", catalogue.settings, [{}] * len(pool), z, mask, None, None)
    draws = K.draw_clips([get_info(str(f)).duration for f in pool], CLIP, 1, seed=7)
    clips = [load_audio(str(pool[t]), SR, start, CLIP) for t, start in draws]
    distances = np.stack(
        [
            C.track_distances(tracks, model.embed(x, SR, hop=1.0), np.arange(len(pool)), redux)
            for x in clips
        ]
    )
    works = np.repeat(np.arange(len(pool) // VERSIONS), VERSIONS)
    clip_work = works[[t for t, _ in draws]]

    # the catalogue as built: its verdicts on the clips of the 70 works it does not hold are
    # the engine's distances against the threshold
    unseen = np.flatnonzero(clip_work >= len(CATALOGUED))
    alarms = []
    for i in unseen[::4]:
        result = catalogue.query(clips[i], samplerate=SR, topk=3, exact=True)
        assert result.threshold_source == "calibrated"
        assert result.found == (distances[i, : len(catalogue)].min() <= decision.threshold)
        alarms.append(result.found)
    rate = float(np.mean(distances[unseen, : len(catalogue)].min(axis=1) <= decision.threshold))
    print(f"false-alarm rate on {len(unseen)} clips of works not in the catalogue: {rate:.3f}")
    # one catalogue: which works it holds moves the rate by a few points
    assert abs(rate - 0.1) <= 0.05, rate

    # over many catalogues of the same size drawn from these 140 works (the rest held out), the
    # mean rate is the target: the calibration is right in expectation
    rng = np.random.default_rng(5)
    rates = []
    for _ in range(200):
        chosen = rng.permutation(len(pool) // VERSIONS)[: len(CATALOGUED)]
        held = ~np.isin(clip_work, chosen)
        best = distances[held][:, np.isin(works, chosen)].min(axis=1)
        rates.append(np.mean(best <= decision.threshold))
    mean = float(np.mean(rates))
    print(f"mean false-alarm rate over 200 catalogues of 70 works: {mean:.3f} (target 0.1)")
    assert abs(mean - 0.1) <= 0.03, mean

    # a clip of a catalogued track is a version, with a small false-alarm chance
    x = load_audio(str(files[140][1]), SR, 2.0, CLIP)
    result = catalogue.query(x, samplerate=SR, topk=3)
    assert result.verdict == "version found" and result.matches[0].id == "work140/v1"
    assert result.matches[0].false_alarm < 0.1 <= max(m.false_alarm for m in result.matches[1:])

    # two recordings: the calibrated verdict of one comparison (one candidate, not 140)
    single = K.Decision(catalogue.data.calibration, str(cat), 1)
    assert single.threshold >= decision.threshold
    pair = catalogue.compare(files[140][0], files[140][1])
    assert pair.threshold_source == "calibrated" and pair.threshold == single.threshold
    assert pair.is_version == (pair.distance <= single.threshold)
    assert catalogue.compare(files[140][0], files[140][1], threshold=0.0).is_version is False
