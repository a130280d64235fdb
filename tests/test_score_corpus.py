"""The corpus of real compositions (lib/score_corpus.py): music21's scores through FluidSynth.

Rendering needs Debian's fluidsynth and fluid-soundfont-gm (``install_requirements.sh --scores``,
which CI runs); without them those tests are skipped and the others still run."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

import data_preproc
from lib import preproc, score_corpus, synth

SR = 8000
needs_fluidsynth = pytest.mark.skipif(
    not (os.path.isfile(score_corpus.SOUNDFONT) and score_corpus.shutil.which("fluidsynth")),
    reason="needs fluidsynth and the FluidR3 soundfont (install_requirements.sh --scores)",
)


@pytest.fixture(scope="module")
def chorale():
    return score_corpus.load_score(score_corpus.corpus_paths("bach")[0])


def test_scores_are_read_as_notes_bars_and_voices(chorale):
    assert chorale.voices == len({v for *_, v in chorale.notes}) >= 4
    assert chorale.bar == 4.0 and chorale.length >= 16
    starts = [n[0] for n in chorale.notes]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert all(d > 0 and 30 <= p <= 90 for _, d, p, _ in chorale.notes)
    assert max(s + d for s, d, _, _ in chorale.notes) == chorale.length


def test_works_are_one_movement_per_mass_and_never_fillers():
    works, fillers = score_corpus.work_paths(), score_corpus.filler_paths()
    assert len(works) > 200 and len(fillers) > 1000 and not set(works) & set(fillers)
    masses = []
    for path in works:
        if "palestrina" in path:
            with open(path, errors="replace") as handle:
                masses.append(re.search(r"^!!!OPR:\s*(.+)$", handle.read(2000), re.M).group(1))
    assert len(masses) == len(set(masses)) > 90
    chosen, per_track = score_corpus.corpus_plan(5, 3, seed=1)
    assert chosen == score_corpus.corpus_plan(5, 3, seed=1)[0] and len(per_track) == 15
    used = [p for pair in per_track for p in pair]
    assert len(used) == len(set(used)) == 30 and not set(used) & set(works)  # each filler once
    with pytest.raises(score_corpus.ScoreCorpusError, match="filler pieces"):
        score_corpus.corpus_plan(200, 8, seed=0)


def test_midi_file_holds_the_notes_programs_key_and_tempo(tmp_path, chorale):
    from music21 import converter, midi

    notes = score_corpus.excerpt(chorale, 0, 2)
    path = tmp_path / "x.mid"
    programs = (40, 19, 0, 73, 56)
    score_corpus.write_midi(path, notes, programs, qpm=90, transpose=3)
    parsed = converter.parse(str(path))
    assert len(parsed.parts) == chorale.voices
    got = sorted(
        (float(n.offset), p.midi)
        for part in parsed.parts
        for n in part.flatten().notes
        for p in n.pitches
    )
    assert got == sorted((s, p + 3) for s, _, p, _ in notes)
    # programs and tempo from the file's events (music21's score view drops program changes)
    raw = midi.MidiFile()
    raw.open(str(path))
    raw.read()
    raw.close()
    found = [
        [e.data for e in track.events if e.type == midi.ChannelVoiceMessages.PROGRAM_CHANGE]
        for track in raw.tracks[1:]
    ]
    assert found == [[p] for p in programs]
    channels = {e.channel for t in raw.tracks[1:] for e in t.events if e.channel is not None}
    assert 10 not in channels  # music21 counts channels from 1: never the drum channel
    tempo_event = [e for e in raw.tracks[0].events if e.type == midi.MetaEvents.SET_TEMPO][0]
    assert int.from_bytes(tempo_event.data, "big") == round(60_000_000 / 90)


def test_versions_vary_key_tempo_instruments_and_the_part_played(chorale):
    versions = [score_corpus.vary(chorale, np.random.default_rng(s), base_qpm=100) for s in range(100)]
    assert {v.transpose for v in versions} == set(range(-6, 7))
    assert all(80 <= v.qpm <= 125 for v in versions)
    assert len({v.programs for v in versions}) == 100
    assert all(len(v.programs) == chorale.voices for v in versions)
    bars = int(chorale.length // chorale.bar)
    for v in versions:
        lay = v.layout
        assert 60 <= lay.duration <= 180 and 0 <= lay.first < lay.last <= bars
        assert lay.end - lay.start == pytest.approx((lay.last - lay.first) * 4 * 60 / v.qpm)
    whole = score_corpus.vary(chorale, np.random.default_rng(0), "arrangement", 100)
    assert whole.layout is None
    with pytest.raises(ValueError, match="variation"):
        score_corpus.vary(chorale, np.random.default_rng(0), "cover")


def test_a_partial_work_is_the_first_bars_of_its_composition(chorale):
    # the first bars filling work_seconds at the work's own tempo, so that its versions' parts
    # overlap as lib.synth's 90 s works do (whole compositions mostly gave versions no common bar)
    bars = int(np.ceil(chorale.length / chorale.bar - 1e-9))
    bar_s = chorale.bar * 60 / 100  # at 100 quarters per minute
    assert bars > 10
    assert score_corpus.work_bars(chorale, 100, 10 * bar_s) == 10
    assert score_corpus.work_bars(chorale, 100, 0.1) == 1
    assert score_corpus.work_bars(chorale, 100, None) == bars == score_corpus.work_bars(
        chorale, 100, 1000.0
    )
    versions = [
        score_corpus.vary(chorale, np.random.default_rng(s), base_qpm=100, work_seconds=10 * bar_s)
        for s in range(50)
    ]
    assert max(v.layout.last for v in versions) == 10  # at every version's own tempo
    assert min(v.layout.first for v in versions) == 0


@needs_fluidsynth
def test_partial_version_plays_its_bars_where_the_layout_says():
    work = score_corpus.load_score(score_corpus.work_paths()[0])
    fillers = [score_corpus.load_score(p) for p in score_corpus.filler_paths()[:2]]
    for seed in range(100):  # the first layout with other music on both sides
        version = score_corpus.vary(work, np.random.default_rng(seed))
        lay = version.layout
        if lay.start > 5 and lay.duration - lay.end > 5:
            break
    clean = dataclasses.replace(version, noise_db=90.0, reverb=0.0, tilt=0.0)
    x = score_corpus.render_version(work, clean, SR, fillers)
    lay = clean.layout
    assert len(x) == round(lay.duration * SR)
    start, end, fade = round(lay.start * SR), round(lay.end * SR), int(synth.FADE_S * SR)
    alone = score_corpus.render_notes(
        score_corpus.excerpt(work, lay.first, lay.last), clean, lay.duration - lay.start, SR
    )
    assert np.corrcoef(x[start + fade : end], alone[fade : end - start])[0, 1] > 0.99
    before, after = x[: start - fade], x[end + fade :]
    for part in (before, after):  # other music, not silence, not the work's part
        assert np.sqrt(np.mean(part**2)) > 0.01
        n = min(len(part), len(alone))
        assert abs(np.corrcoef(part[:n], alone[:n])[0, 1]) < 0.2


@needs_fluidsynth
def test_cli_writes_a_partial_corpus_with_spans_that_preprocessing_reads(tmp_path):
    out = tmp_path / "audio"
    args = ["--out", str(out), "--works", "2", "--versions", "2", "--samplerate", str(SR),
            "--formats", "wav,mp3", "--njobs", "2"]
    assert score_corpus.main(args) == 0
    spans = json.loads((out / synth.SPANS_FILE).read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("v*.*"))
    assert sorted(spans) == files and len(files) == 4
    for name, span in spans.items():
        info = sf.info(str(out / name))
        assert info.samplerate == SR
        assert info.duration == pytest.approx(span["duration"], abs=0.06)  # mp3 frames
        assert 0 <= span["start"] < span["end"] <= span["duration"] + 1e-3
        assert span["bars"][0] < span["bars"][1] and span["score"]
    for w in ("work000", "work001"):  # the work's own time: one bar length for all its versions
        bars = [
            (s["work_end"] - s["work_start"]) / (s["bars"][1] - s["bars"][0])
            for name, s in spans.items() if name.startswith(w)
        ]
        assert bars[0] == pytest.approx(bars[1], rel=1e-3)
    fn_out = tmp_path / "meta.pt"
    pre = ["--dataset=folder", f"--path_audio={out}", "--ext_in=any", f"--fn_out={fn_out}"]
    assert data_preproc.main(pre + ["--split=test", "--njobs=1"]) == 0
    info, splits = preproc.load_metadata(fn_out)
    assert len(info) == 4 and len(splits["test"]) == 2


def test_missing_fluidsynth_is_named_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(score_corpus, "SOUNDFONT", str(tmp_path / "none.sf2"))
    with pytest.raises(score_corpus.ScoreCorpusError, match="install_requirements.sh --scores"):
        score_corpus.check_tools()
    assert score_corpus.main(["--out", str(tmp_path / "a"), "--works", "1"]) == 1
    assert not (tmp_path / "a").exists()
