import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

import data_preproc
from lib import preproc, synth

SR = 16000


def clean(version, **over):
    """The same version without mix effects, so pitch and timing can be measured."""
    fields = dict(noise_db=80.0, reverb=0.0, drums=False, tilt=0.0)
    fields.update(over)
    return dataclasses.replace(version, **fields)


def chroma(x, sr=SR):
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    keep = (freqs > 60) & (freqs < 2000)
    classes = np.round(12 * np.log2(freqs[keep] / 440.0)).astype(int) % 12
    out = np.bincount(classes, weights=spectrum[keep], minlength=12)
    return out / np.linalg.norm(out)


@pytest.fixture(scope="module")
def piece():
    return synth.compose(np.random.default_rng(3), target_seconds=20)


def test_rendering_is_seeded(piece):
    v = synth.vary(piece, np.random.default_rng(1))
    a = synth.render(piece, v, SR, np.random.default_rng(5))
    b = synth.render(piece, v, SR, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.isfinite(a).all()
    assert np.abs(a).max() == pytest.approx(v.gain, rel=1e-4)


def test_versions_vary_like_covers(piece):
    versions = [synth.vary(piece, np.random.default_rng(s)) for s in range(200)]
    transposes = {v.transpose for v in versions}
    assert transposes == set(range(-6, 7))
    tempos = [v.tempo for v in versions]
    assert 0.8 <= min(tempos) < 0.85 and 1.2 < max(tempos) <= 1.25
    assert any(v.form[0] != piece.form[0] for v in versions)  # different start
    assert any(len(v.form) < len(piece.form) for v in versions)  # dropped section
    # the arrangement is the piece's own; a quarter of the versions change the lead instrument
    chords = {
        (v.chord_timbre, v.bass_timbre, v.chord_pattern, v.drums, v.bass_pattern, v.voicing)
        for v in versions
    }
    assert len(chords) == 1
    leads = [(v.melody_timbre, v.melody_env) for v in versions]
    own = (piece.arrangement["melody_timbre"], piece.arrangement["melody_env"])
    assert 0.6 < sum(lead == own for lead in leads) / len(leads) < 0.9
    pieces = [synth.compose(np.random.default_rng(s), 20) for s in range(200)]
    arrangements = {tuple(sorted(p.arrangement.items())) for p in pieces}
    assert len(arrangements) > 150
    assert {p.arrangement["chord_pattern"] for p in pieces} == {"arpeggio", "sustain"}
    assert {p.arrangement["drums"] for p in pieces} == {True, False}


def test_key_change_shifts_pitch_content(piece):
    base = clean(synth.vary(piece, np.random.default_rng(2)), transpose=0, tempo=1.0)
    x0 = synth.render(piece, base, SR, np.random.default_rng(0))
    c0 = chroma(x0)
    for shift in (3, -5):
        c1 = chroma(synth.render(piece, dataclasses.replace(base, transpose=shift), SR))
        scores = [np.dot(np.roll(c0, k), c1) for k in range(12)]
        assert int(np.argmax(scores)) == shift % 12


def test_tempo_changes_duration(piece):
    base = clean(synth.vary(piece, np.random.default_rng(2)), tempo=1.0)
    slow = synth.render(piece, dataclasses.replace(base, tempo=0.8), SR)
    fast = synth.render(piece, dataclasses.replace(base, tempo=1.25), SR)
    assert len(slow) / len(fast) == pytest.approx(1.25 / 0.8, rel=0.01)


def test_cli_writes_folder_layout_that_preprocessing_reads(tmp_path):
    out = tmp_path / "audio"
    assert synth.main(["--out", str(out), "--works", "3", "--versions", "3", "--seconds", "6"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*"))
    assert len(files) == 9
    assert {f.rsplit(".", 1)[1] for f in files} == set(synth.FORMATS)  # every decoder path
    fn_out = tmp_path / "meta.pt"
    args = ["--dataset=folder", f"--path_audio={out}", "--ext_in=any", f"--fn_out={fn_out}"]
    assert data_preproc.main(args + ["--split=test", "--njobs=1"]) == 0
    info, splits = preproc.load_metadata(fn_out)
    assert len(info) == 9 and len(splits["test"]) == 3
    assert all(song["samplerate"] in (16000, 48000) for song in info.values())


# --------------------------------------------------------------------------------------------------
# --variation arrangement: every version re-arranged, the composition kept
# --------------------------------------------------------------------------------------------------

ARRANGEMENT = ("melody_timbre", "chord_timbre", "bass_timbre", "chord_pattern", "bass_pattern",
               "voicing", "drum_pattern")


def test_arrangement_mode_redraws_instruments_patterns_and_voicings(piece):
    versions = [synth.vary(piece, np.random.default_rng(s), "arrangement") for s in range(200)]
    for name in ARRANGEMENT:
        values = {getattr(v, name) for v in versions}
        assert len(values) >= 3, name
    assert {v.chord_pattern for v in versions} == set(synth.CHORD_PATTERNS)
    assert {v.voicing for v in versions} == set(synth.VOICINGS)
    assert {v.drum_pattern for v in versions} == set(synth.DRUM_PATTERNS)
    assert all(0.2 <= v.ornament <= 0.6 for v in versions)
    # the same draws as the cover mode come first: key, tempo, form and mix do not change
    for s in range(20):
        cover = synth.vary(piece, np.random.default_rng(s))
        other = synth.vary(piece, np.random.default_rng(s), "arrangement")
        assert (cover.transpose, cover.tempo, cover.form, cover.gain) == (
            other.transpose, other.tempo, other.form, other.gain)


def test_versions_of_a_work_differ_in_instruments_in_arrangement_mode():
    # the 4 versions of each of 10 works: within a work, instruments differ between versions
    # (in the cover mode only the lead may change, in a quarter of the versions)
    for mode, expect_differ in (("arrangement", True), ("cover", False)):
        differ = 0
        for w in range(10):
            rng, piece = synth.work_piece(w, seed=0, seconds=20)
            versions = [synth.vary(piece, rng, mode) for _ in range(4)]
            differ += len({(v.chord_timbre, v.bass_timbre, v.voicing) for v in versions}) > 1
        assert (differ >= 9) if expect_differ else differ == 0


def test_arrangement_corpus_is_seeded_and_differs_from_the_cover_one(tmp_path):
    def render(mode, njobs):
        out = tmp_path / f"{mode}-{njobs}"
        synth.make_corpus(out, works=2, versions=2, seconds=6, seed=4, formats=("wav",),
                          njobs=njobs, variation=mode)
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.wav"))}

    one, two = render("arrangement", 1), render("arrangement", 2)
    assert one == two and len(one) == 4  # the same files whatever the number of processes
    cover = render("cover", 1)
    assert cover.keys() == one.keys() and all(cover[k] != one[k] for k in one)


def test_ornaments_keep_the_melody_and_its_length():
    melody = [(0.0, 1.0, 2, 0), (1.0, 0.5, 4, 0), (1.5, 2.0, 0, 0), (3.5, 1.0, 3, 0)]
    assert synth._ornamented(melody, 0.0, np.random.default_rng(0)) == melody
    notes = synth._ornamented(melody, 1.0, np.random.default_rng(0))
    assert sum(n[1] for n in notes) == sum(n[1] for n in melody)  # the same total length
    kept = [(start + length, degree) for start, length, degree, _ in notes]
    for start, length, degree, _ in melody:  # each note still ends when it did
        assert (start + length, degree) in kept
    # passing notes: between the 4 and the 0 from above (a 1), between the 0 and the 3 from
    # below (a 2); the first note has no previous one: a neighbour, a step above or below
    assert (1.5, 0.5, 1, 0) in notes and (3.5, 0.5, 2, 0) in notes
    assert notes[0][:2] == (0.0, 0.5) and notes[0][2] in (1, 3)


def test_every_accompaniment_and_groove_renders(piece):
    base = synth.vary(piece, np.random.default_rng(1), "arrangement")
    for pattern in synth.CHORD_PATTERNS:
        for voicing in synth.VOICINGS:
            v = dataclasses.replace(base, chord_pattern=pattern, voicing=voicing, drums=False)
            x = synth.render(piece, v, SR, np.random.default_rng(0))
            assert np.isfinite(x).all() and np.abs(x).max() > 0.1
    drums = []
    for groove in synth.DRUM_PATTERNS:
        v = clean(base, drums=True, drum_pattern=groove, melody_timbre="sine")
        drums.append(synth.render(piece, v, SR, np.random.default_rng(0)))
    assert len({x.tobytes() for x in drums}) == len(synth.DRUM_PATTERNS)


def test_cli_variation_option(tmp_path):
    args = ["--out", str(tmp_path / "a"), "--works", "1", "--versions", "2", "--seconds", "4",
            "--formats", "wav"]
    assert synth.main(args + ["--variation", "arrangement"]) == 0
    assert len(list((tmp_path / "a").rglob("*.wav"))) == 2
    with pytest.raises(SystemExit):
        synth.main(args + ["--variation", "remix"])
    with pytest.raises(ValueError, match="variation must be one of"):
        synth.vary(synth.compose(np.random.default_rng(0), 10), np.random.default_rng(0), "x")


# --------------------------------------------------------------------------------------------------
# --variation same-form and passages: where each section of a version plays
# --------------------------------------------------------------------------------------------------


def test_same_form_keeps_the_form_and_the_cover_draws(piece):
    for s in range(20):
        cover = synth.vary(piece, np.random.default_rng(s))
        same = synth.vary(piece, np.random.default_rng(s), "same-form")
        assert same.form == piece.form
        assert dataclasses.replace(cover, form=piece.form) == same


def test_passages_say_where_each_section_plays(piece):
    # the same section sounds the same wherever it plays (a clean mix, no melody ornaments),
    # and differs from another section; at another tempo the passages move with it
    base = clean(synth.vary(piece, np.random.default_rng(0), "same-form"), ornament=0.0)
    for tempo in (0.8, 1.2):
        version = dataclasses.replace(base, tempo=tempo, form=["A", "B", "A"])
        x = synth.render(piece, version, SR, np.random.default_rng(0))
        spans = synth.passages(piece, version)
        assert [name for name, _, _ in spans] == ["A", "B", "A"]
        assert spans[0][1] == 0 and spans[0][2] == spans[1][1] and spans[1][2] == spans[2][1]
        length = spans[0][2]
        beat = 60 / (piece.bpm * tempo)
        assert length == pytest.approx(synth.SECTION_BARS * piece.beats_per_bar * beat)
        assert len(x) / SR == pytest.approx(spans[-1][2] + 2 * beat, abs=0.01)

        def chromas(start):  # pitch classes of each bar of the section from ``start`` (s)
            bar = length / synth.SECTION_BARS
            cuts = [int((start + i * bar) * SR) for i in range(synth.SECTION_BARS + 1)]
            return np.concatenate([chroma(x[i:j]) for i, j in zip(cuts, cuts[1:])])

        a1, b, a2 = chromas(spans[0][1]), chromas(spans[1][1]), chromas(spans[2][1])
        same, other = np.corrcoef(a1, a2)[0, 1], np.corrcoef(a1, b)[0, 1]
        assert same > 0.95 and other < same - 0.2, (same, other)


def test_unseen_rendering_is_the_audio_of_unseen_version():
    piece, version, x = synth.unseen_rendering(2, 5, 10, 8000, variation="same-form")
    assert version.form == piece.form
    assert np.array_equal(x, synth.unseen_version(2, 5, 10, 8000, variation="same-form"))
    rendered = list(synth.rendered_versions(2, 2, 10, 5, 8000, "same-form"))
    assert all(p == piece and v.form == piece.form for p, v, _ in rendered)
    assert not np.array_equal(rendered[0][2][: len(x)], x[: len(rendered[0][2])])


# --------------------------------------------------------------------------------------------------
# --variation partial: a part of the work inside a longer track of other music (weak labels)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_piece():
    return synth.compose(np.random.default_rng(7), target_seconds=90)


def test_partial_layouts_hold_a_drawn_share_of_the_work_in_a_longer_track(long_piece):
    versions = [synth.vary(long_piece, np.random.default_rng(s), "partial") for s in range(200)]
    sections = len(long_piece.form)
    for v in versions:
        lay, length = v.layout, synth.section_seconds(long_piece, v.tempo)
        assert 60.0 <= lay.duration <= 180.0
        assert 0 <= lay.first < lay.last <= sections
        assert v.form == long_piece.form[lay.first : lay.last]
        assert lay.end - lay.start == pytest.approx((lay.last - lay.first) * length)
        assert 0.0 <= lay.start and lay.end <= lay.duration + 1e-9
        # the share drawn in 20-50%, rounded to whole sections (and at most the whole work)
        share = (lay.end - lay.start) / lay.duration
        assert 0.2 - length / 60.0 <= share <= 0.5 + length / 60.0
    # parts differ: where they start in the work and in the track; some pairs do not overlap
    assert len({v.layout.first for v in versions}) > sections // 2
    assert max(v.layout.start for v in versions) > 60
    parts = [(v.layout.first, v.layout.last) for v in versions[:40]]
    disjoint = sum(a[1] <= b[0] or b[1] <= a[0] for i, a in enumerate(parts) for b in parts[:i])
    overlapping = len(parts) * (len(parts) - 1) // 2 - disjoint
    assert disjoint > 0 and overlapping > 0
    # the arrangement is the piece's own, as in the cover mode, and redrawn for each version in
    # partial-arrangement; key, tempo and mix are the cover mode's draws in both
    assert len({(v.chord_timbre, v.voicing, v.drum_pattern) for v in versions}) == 1
    rearranged = [
        synth.vary(long_piece, np.random.default_rng(s), "partial-arrangement") for s in range(200)
    ]
    assert len({(v.chord_timbre, v.voicing, v.drum_pattern) for v in rearranged}) > 50
    assert all(v.layout.duration >= 60 and v.layout.end > v.layout.start for v in rearranged)
    cover = synth.vary(long_piece, np.random.default_rng(3))
    for partial in (versions[3], rearranged[3]):
        assert (partial.transpose, partial.tempo, partial.gain) == (
            cover.transpose, cover.tempo, cover.gain)


def test_partial_version_plays_its_work_where_the_layout_says(long_piece):
    # a clean mix (no noise, reverb, EQ), so the track between the cross-fades is the work's
    # sections rendered alone, scaled; the rest of the track is other music
    for s in (0, 1, 2):
        version = clean(synth.vary(long_piece, np.random.default_rng(s), "partial"))
        x = synth.render(long_piece, version, SR, np.random.default_rng(9))
        alone = synth.render(
            long_piece, dataclasses.replace(version, layout=None), SR, np.random.default_rng(9)
        )
        lay = version.layout
        assert len(x) == round(lay.duration * SR)
        start, end, fade = round(lay.start * SR), round(lay.end * SR), int(synth.FADE_S * SR)
        inside, own = x[start + fade : end], alone[fade : end - start]
        assert np.corrcoef(inside, own)[0, 1] > 0.999
        spans = synth.passages(long_piece, version)
        assert spans[0][1] == pytest.approx(lay.start) and spans[-1][2] == pytest.approx(lay.end)
        for part in (x[: max(0, start - fade)], x[end + fade :]):
            if len(part) > SR:  # other music, not silence, and not the work's opening
                assert np.sqrt(np.mean(part**2)) > 0.02
                n = min(len(part), len(alone))
                assert abs(np.corrcoef(part[:n], alone[:n])[0, 1]) < 0.2


def test_partial_fillers_have_instruments_of_their_own(long_piece):
    # the other music must not tell the work by its sound: in the partial mode every version of
    # a work has the piece's instruments, its fillers those of their own pieces
    version = synth.vary(long_piece, np.random.default_rng(0), "partial")
    fields = ("melody_timbre", "chord_timbre", "bass_timbre", "chord_pattern", "drums")
    differ = 0
    for seed in range(20):
        filler = synth.compose(np.random.default_rng(seed), 30)
        other = synth.filler_version(version, filler, repeats=2, transpose=3)
        assert {f: getattr(other, f) for f in fields} == {f: filler.arrangement[f] for f in fields}
        assert other.form == filler.form * 2 and other.tempo == 1.0 and other.layout is None
        assert (other.transpose, other.noise_db) == (3, version.noise_db)
        differ += any(getattr(other, f) != getattr(version, f) for f in fields)
    assert differ >= 18


def test_partial_corpus_records_each_span_in_spans_json(tmp_path):
    out = tmp_path / "audio"
    args = ["--out", str(out), "--works", "2", "--versions", "2", "--seconds", "30",
            "--samplerate", "8000", "--formats", "wav,flac", "--variation", "partial"]
    assert synth.main(args) == 0
    with open(out / synth.SPANS_FILE) as handle:
        spans = json.load(handle)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("v*.*"))
    assert sorted(spans) == files and len(files) == 4
    for w in range(2):
        rng, piece = synth.work_piece(w, seed=0, seconds=30)
        for v in range(2):
            version = synth.vary(piece, rng, "partial")
            synth.render(piece, version, 8000, rng)  # the stream goes on through the rendering
            name = [f for f in files if f.startswith(f"work{w:03d}/v{v}.")][0]
            assert spans[name] == synth.work_span(piece, version)
            info = sf.info(str(out / name))
            assert info.duration == pytest.approx(spans[name]["duration"], abs=1e-3)
            assert spans[name]["end"] <= spans[name]["duration"]
    # the metadata of data_preproc.py lists the audio files, not spans.json
    fn_out = tmp_path / "meta.pt"
    pre = ["--dataset=folder", f"--path_audio={out}", "--ext_in=any", f"--fn_out={fn_out}"]
    assert data_preproc.main(pre + ["--split=test", "--njobs=1"]) == 0
    info, _ = preproc.load_metadata(fn_out)
    assert sorted(song["filename"] for song in info.values()) == files
    # the cover corpus writes no spans
    synth.make_corpus(tmp_path / "cover", works=1, versions=2, seconds=4, formats=("wav",))
    assert not (tmp_path / "cover" / synth.SPANS_FILE).exists()
