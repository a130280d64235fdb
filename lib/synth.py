"""Built-in demo corpus: seeded synthetic pieces, each rendered as several versions that differ
the way covers do.

A piece is a scale, a one-bar melodic motif, chord progressions for verse, chorus and bridge
(sharing material, as songs do), a melody, a bass line and an arrangement (instruments, sustained
or arpeggiated chords, bass pattern, drums). A version changes the key (up to +/-6 semitones),
the tempo (0.8-1.25x), the structure (where it starts, sections dropped or repeated), the mix
(noise, reverb, EQ, level) and, in a quarter of the versions, the lead instrument.

    python -m lib.synth --out data/demo/audio --works 40 --versions 4 --seconds 40

writes the ``folder`` layout ``<out>/<work>/<version>.<ext>``, rotating the formats (wav, flac,
mp3, m4a, ogg) so every decoder path is used.
"""

import argparse
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, lfilter

from lib.audio import write_audio

SCALES = {
    "major": [0, 2, 4, 5, 7, 9, 11],
    "minor": [0, 2, 3, 5, 7, 8, 10],
    "dorian": [0, 2, 3, 5, 7, 9, 10],
    "mixolydian": [0, 2, 4, 5, 7, 9, 10],
}
# harmonic amplitude profiles (index k = partial k + 1)
TIMBRES = {
    "sine": [1.0],
    "organ": [1.0, 0.6, 0.35, 0.25, 0.12, 0.08],
    "saw": [1.0 / k for k in range(1, 11)],
    "square": [1.0 / k if k % 2 else 0.0 for k in range(1, 12)],
    "soft": [1.0, 0.3, 0.1, 0.05],
    "reed": [0.6, 1.0, 0.5, 0.45, 0.2, 0.15, 0.1],
}
ENVELOPES = ("pluck", "pad", "piano", "organ")
FORMATS = ("wav", "flac", "mp3", "m4a", "ogg")
SECTION_BARS = 4


@dataclass
class Section:
    chords: list  # scale degree of each bar's chord root
    melody: list  # (start beat, length in beats, scale degree, octave offset)


@dataclass
class Piece:
    scale: list
    tonic: int  # MIDI note of the tonic
    bpm: float
    beats_per_bar: int
    sections: dict  # name -> Section
    form: list  # section names in order
    arrangement: dict  # instruments and patterns of the piece's own recording (Version fields)


def compose(rng, target_seconds=40.0):
    """A random piece whose base form lasts about ``target_seconds``.

    As in most songs, the sections share material: a one-bar melodic motif runs through all of
    them, the chorus (B) keeps half of the verse's (A) chords, and only the bridge (C) has its
    own progression; so any two excerpts of a piece have something in common."""
    scale = SCALES[rng.choice(list(SCALES))]
    beats_per_bar = int(rng.choice([3, 4, 4, 4]))
    bpm = float(rng.uniform(80, 140))
    motif = _motif(rng, beats_per_bar)
    verse = [0] + [int(rng.choice([1, 2, 3, 4, 5])) for _ in range(SECTION_BARS - 1)]
    chorus = [
        c if bar % 2 == 0 else int(rng.choice([1, 2, 3, 4, 5])) for bar, c in enumerate(verse)
    ]
    bridge = [int(rng.choice([1, 2, 3, 4, 5])) for _ in range(SECTION_BARS)]
    sections = {
        name: Section(chords=chords, melody=_melody(rng, chords, motif, beats_per_bar))
        for name, chords in zip("ABC", (verse, chorus, bridge))
    }
    section_seconds = SECTION_BARS * beats_per_bar * 60 / bpm
    nsections = max(3, round(target_seconds / section_seconds))
    form = ["A", "B"] + [str(rng.choice(list("ABC"))) for _ in range(nsections - 2)]
    tonic = int(rng.integers(55, 67))
    return Piece(scale, tonic, bpm, beats_per_bar, sections, form, _arrangement(rng))


def _arrangement(rng):
    timbres = list(TIMBRES)
    return dict(
        melody_timbre=str(rng.choice(timbres)),
        chord_timbre=str(rng.choice(timbres)),
        bass_timbre=str(rng.choice(["sine", "soft", "organ", "saw"])),
        melody_env=str(rng.choice(ENVELOPES)),
        chord_env=str(rng.choice(ENVELOPES)),
        arpeggio=bool(rng.random() < 0.4),
        bass_pattern=str(rng.choice(["whole", "beats", "root-fifth"])),
        drums=bool(rng.random() < 0.5),
        melody_octave=int(rng.choice([0, 0, 1, -1])),
    )


def _motif(rng, beats_per_bar):
    """One bar of melody: (start beat, length in beats, scale steps from the bar's first note)."""
    notes, beat, step = [], 0.0, 0
    while beat < beats_per_bar:
        length = min(float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])), beats_per_bar - beat)
        notes.append((beat, length, step))
        step += int(rng.choice([-2, -1, -1, 1, 1, 2, 3]))
        beat += length
    return notes


def _melody(rng, chords, motif, beats_per_bar):
    """The motif on every bar, starting on a chord tone, with a few notes changed or left out."""
    notes = []
    for bar, root in enumerate(chords):
        first = root + int(rng.choice([0, 2, 4]))
        for beat, length, step in motif:
            degree = first + step + (int(rng.choice([-1, 1])) if rng.random() < 0.15 else 0)
            if rng.random() > 0.1:  # a few rests
                notes.append((bar * beats_per_bar + beat, length, int(np.clip(degree, -3, 10)), 0))
    return notes


def midi_of(piece, degree, octave=0, transpose=0):
    octave += degree // 7
    return piece.tonic + 12 * octave + piece.scale[degree % 7] + transpose


def hz(midi):
    return 440.0 * 2 ** ((midi - 69) / 12)


###################################################################################################
# Versions
###################################################################################################


@dataclass
class Version:
    transpose: int
    tempo: float
    form: list
    melody_timbre: str
    chord_timbre: str
    bass_timbre: str
    melody_env: str
    chord_env: str
    arpeggio: bool
    bass_pattern: str  # "whole", "beats", "root-fifth"
    drums: bool
    melody_octave: int
    noise_db: float  # signal-to-noise ratio
    reverb: float  # wet level
    reverb_s: float  # decay time
    tilt: float  # spectral tilt of the EQ: < 0 darker, > 0 brighter
    gain: float  # output peak


def vary(piece, rng):
    """Random cover-like changes of a piece: key, tempo, structure and mix always; the lead
    instrument in a quarter of the versions (the rest of the arrangement is the piece's own, as
    the band's sound usually survives a cover: a demo model learns key, tempo and structure
    invariance in minutes, arrangement invariance takes far more data)."""
    form = list(piece.form)
    if rng.random() < 0.5:  # start later
        form = form[int(rng.integers(1, 3)) :]
    if rng.random() < 0.4 and len(form) > 3:  # drop a section
        form.pop(int(rng.integers(1, len(form))))
    if rng.random() < 0.4:  # repeat a section
        i = int(rng.integers(0, len(form)))
        form.insert(i, form[i])
    arrangement = dict(piece.arrangement)
    if rng.random() < 0.25:  # another lead instrument
        arrangement["melody_timbre"] = str(rng.choice(list(TIMBRES)))
        arrangement["melody_env"] = str(rng.choice(ENVELOPES))
    return Version(
        transpose=int(rng.integers(-6, 7)),
        tempo=float(rng.uniform(0.8, 1.25)),
        form=form,
        noise_db=float(rng.uniform(15, 45)),
        reverb=float(rng.uniform(0.0, 0.4)),
        reverb_s=float(rng.uniform(0.2, 1.5)),
        tilt=float(rng.uniform(-1, 1)),
        gain=float(rng.uniform(0.4, 0.9)),
        **arrangement,
    )


###################################################################################################
# Rendering
###################################################################################################


def _envelope(kind, n, sr):
    t = np.arange(n) / sr
    attack = np.minimum(1.0, t / {"pluck": 0.005, "pad": 0.15, "piano": 0.01, "organ": 0.02}[kind])
    if kind == "pluck":
        body = np.exp(-t / 0.25)
    elif kind == "piano":
        body = 0.3 + 0.7 * np.exp(-t / 0.5)
    else:
        body = np.ones(n)
    release = np.minimum(1.0, (n - np.arange(n)) / (0.03 * sr))
    return attack * body * release


def _add_note(out, sr, start_s, length_s, freq, timbre, env, amp, rng):
    start, n = int(start_s * sr), int(length_s * sr)
    n = min(n, len(out) - start)
    if n <= 0 or freq >= sr / 2:
        return
    t = np.arange(n) / sr
    partials = np.asarray(TIMBRES[timbre])
    k = np.arange(1, len(partials) + 1)
    keep = k * freq < sr / 2
    phases = rng.uniform(0, 2 * np.pi, keep.sum())[:, None]
    wave = (partials[keep, None] * np.sin(2 * np.pi * freq * k[keep, None] * t + phases)).sum(0)
    out[start : start + n] += amp * wave * _envelope(env, n, sr)


def _add_drums(out, sr, beat_s, nbeats, beats_per_bar, rng):
    kick_n, snare_n = int(0.15 * sr), int(0.12 * sr)
    t = np.arange(kick_n) / sr
    kick = np.sin(2 * np.pi * (50 * t + 60 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.05)
    snare = rng.standard_normal(snare_n) * np.exp(-np.arange(snare_n) / (0.04 * sr))
    for b in range(nbeats):
        start = int(b * beat_s * sr)
        drum = kick if b % beats_per_bar in (0, beats_per_bar // 2 + 1) else 0.5 * snare
        end = min(len(out), start + len(drum))
        out[start:end] += 0.5 * drum[: end - start]


def render(piece, version, sr=16000, rng=None):
    """Audio (T,) float32 of one version."""
    rng = rng if rng is not None else np.random.default_rng(0)
    beat_s = 60.0 / (piece.bpm * version.tempo)
    bar_beats = piece.beats_per_bar
    section_beats = SECTION_BARS * bar_beats
    total_beats = section_beats * len(version.form)
    out = np.zeros(int((total_beats + 2) * beat_s * sr))
    for i, name in enumerate(version.form):
        section = piece.sections[name]
        origin = i * section_beats
        for bar, root in enumerate(section.chords):
            bar_start = (origin + bar * bar_beats) * beat_s
            triad = [midi_of(piece, root + d, 0, version.transpose) for d in (0, 2, 4)]
            if version.arpeggio:
                for b in range(2 * bar_beats):
                    note = triad[b % 3] + (12 if b % 6 >= 3 else 0)
                    _add_note(
                        out,
                        sr,
                        bar_start + b * beat_s / 2,
                        beat_s / 2,
                        hz(note),
                        version.chord_timbre,
                        "pluck",
                        0.12,
                        rng,
                    )
            else:
                for note in triad:
                    _add_note(
                        out,
                        sr,
                        bar_start,
                        bar_beats * beat_s,
                        hz(note),
                        version.chord_timbre,
                        version.chord_env,
                        0.1,
                        rng,
                    )
            bass = midi_of(piece, root, -2, version.transpose)
            if version.bass_pattern == "whole":
                hits = [(0, bar_beats, bass)]
            elif version.bass_pattern == "beats":
                hits = [(b, 1, bass) for b in range(bar_beats)]
            else:
                hits = [(b, 1, bass + (7 if b % 2 else 0)) for b in range(bar_beats)]
            for beat, length, note in hits:
                _add_note(
                    out,
                    sr,
                    bar_start + beat * beat_s,
                    length * beat_s,
                    hz(note),
                    version.bass_timbre,
                    "piano",
                    0.25,
                    rng,
                )
        for start, length, degree, octave in section.melody:
            note = midi_of(piece, degree, octave + version.melody_octave, version.transpose)
            _add_note(
                out,
                sr,
                (origin + start) * beat_s,
                length * beat_s,
                hz(note),
                version.melody_timbre,
                version.melody_env,
                0.3,
                rng,
            )
    if version.drums:
        _add_drums(out, sr, beat_s, total_beats, bar_beats, rng)
    return _mix(out, version, sr, rng)


def _mix(x, version, sr, rng):
    # EQ: one-pole split into low and high bands, re-weighted by the tilt
    low = lfilter([0.1], [1, -0.9], x)
    x = low * (1 - 0.5 * version.tilt) + (x - low) * (1 + 0.5 * version.tilt)
    if version.reverb > 0:
        n = int(version.reverb_s * sr)
        ir = rng.standard_normal(n) * np.exp(-np.arange(n) / (version.reverb_s * sr / 6.9))
        wet = fftconvolve(x, ir / np.sqrt((ir**2).sum()))[: len(x)]
        x = x + version.reverb * wet
    power = np.mean(x**2) + 1e-12
    x = x + rng.standard_normal(len(x)) * math.sqrt(power / 10 ** (version.noise_db / 10))
    return (version.gain * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


###################################################################################################
# Corpus
###################################################################################################


def work_piece(w, seed, seconds):
    """(random stream, piece) of work ``w`` of a corpus: both depend only on (seed, w), so the
    corpus is the same whatever the number of processes, and a version rendered later
    (``unseen_version``) is of the same piece. The stream continues into the work's versions."""
    rng = np.random.default_rng([seed, w])
    return rng, compose(rng, seconds)


def render_work(out, w, versions, seconds, seed, sr, formats):
    """Render and write the versions of work ``w`` (see ``work_piece``).

    Returns (number of files, seconds of audio, seconds rendering, seconds encoding)."""
    rng, piece = work_piece(w, seed, seconds)
    nfiles, audio_s, render_s, encode_s = 0, 0.0, 0.0, 0.0
    for v in range(versions):
        t0 = time.perf_counter()
        x = render(piece, vary(piece, rng), sr, rng)
        t1 = time.perf_counter()
        ext = formats[(w + v) % len(formats)]
        write_audio(os.path.join(out, f"work{w:03d}", f"v{v}.{ext}"), x, sr)
        encode_s += time.perf_counter() - t1
        render_s += t1 - t0
        audio_s += len(x) / sr
        nfiles += 1
    return nfiles, audio_s, render_s, encode_s


def unseen_version(work, seed=0, seconds=40.0, sr=16000, variant=0):
    """A version of work ``work`` of the corpus made with (``seed``, ``seconds``) that is not in
    it: the same piece, varied and mixed from another random stream. Returns float32 audio."""
    _, piece = work_piece(work, seed, seconds)
    rng = np.random.default_rng([seed, work, 1_000_000 + variant])
    return render(piece, vary(piece, rng), sr, rng)


def make_corpus(
    out, works=40, versions=4, seconds=40.0, seed=0, sr=16000, formats=FORMATS, njobs=1
):
    """Render ``works`` pieces with ``versions`` versions each into ``out``/<work>/<version>.<ext>,
    in ``njobs`` processes (-1: one per core).

    Returns (number of files, seconds of audio, seconds spent rendering, seconds spent encoding).
    """
    njobs = (os.cpu_count() or 1) if njobs == -1 else max(1, int(njobs))
    jobs = [(out, w, versions, seconds, seed, sr, tuple(formats)) for w in range(works)]
    if njobs == 1 or works == 1:
        results = [render_work(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(min(njobs, works)) as pool:
            results = list(pool.map(render_work, *zip(*jobs)))
    nfiles, audio_s, render_s, encode_s = (sum(column) for column in zip(*results))
    return nfiles, audio_s, render_s, encode_s


def main(argv=None):
    parser = argparse.ArgumentParser(description="Render the synthetic demo corpus.")
    parser.add_argument("--out", required=True, help="output folder (<out>/<work>/<version>.<ext>)")
    parser.add_argument("--works", type=int, default=40)
    parser.add_argument("--versions", type=int, default=4, help="versions per work (>= 2)")
    parser.add_argument("--seconds", type=float, default=40.0, help="approximate version length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplerate", type=int, default=16000)
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, rotated")
    parser.add_argument("--njobs", type=int, default=1, help="processes (-1: one per core)")
    args = parser.parse_args(argv)
    if args.works < 1 or args.versions < 2 or args.seconds <= 0:
        parser.error("need --works >= 1, --versions >= 2 and --seconds > 0")
    formats = tuple(f.strip().lstrip(".") for f in args.formats.split(",") if f.strip())
    nfiles, audio_s, render_s, encode_s = make_corpus(
        args.out,
        args.works,
        args.versions,
        args.seconds,
        args.seed,
        args.samplerate,
        formats,
        args.njobs,
    )
    print(
        f"Wrote {nfiles} files ({audio_s / 60:.1f} min of audio) to {args.out}: rendering "
        f"{audio_s / render_s:.0f}x real time, encoding {audio_s / encode_s:.0f}x real time "
        "(per process)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
