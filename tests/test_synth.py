import dataclasses

import numpy as np
import pytest

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
        (v.chord_timbre, v.bass_timbre, v.arpeggio, v.drums, v.bass_pattern) for v in versions
    }
    assert len(chords) == 1
    leads = [(v.melody_timbre, v.melody_env) for v in versions]
    own = (piece.arrangement["melody_timbre"], piece.arrangement["melody_env"])
    assert 0.6 < sum(lead == own for lead in leads) / len(leads) < 0.9
    pieces = [synth.compose(np.random.default_rng(s), 20) for s in range(200)]
    arrangements = {tuple(sorted(p.arrangement.items())) for p in pieces}
    assert len(arrangements) > 150
    assert {p.arrangement["arpeggio"] for p in pieces} == {True, False}
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
