"""Built-in demo corpus: seeded synthetic pieces, each rendered as several versions that differ
the way covers do.

A piece is a scale, a one-bar melodic motif, chord progressions for verse, chorus and bridge
(sharing material, as songs do), a melody, a bass line and an arrangement (instruments, sustained
or arpeggiated chords, bass pattern, drums). A version changes the key (up to +/-6 semitones),
the tempo (0.8-1.25x), the structure (where it starts, sections dropped or repeated), the mix
(noise, reverb, EQ, level) and, in a quarter of the versions, the lead instrument.

With ``--variation arrangement`` every version is also re-arranged, as real covers are: its
instruments, accompaniment pattern, chord voicing, bass line and drum groove are drawn afresh,
and its melody is ornamented (passing and neighbour notes). What stays is the composition:
melody, harmony and form. The default (``cover``) is the corpus of the demo, unchanged. With
``--variation same-form`` versions keep the piece's form (key, tempo, mix and lead instrument
still change), so where a passage of one version plays in another is known (``passages``).

With ``--variation partial`` the labels are weak, as in medleys, compilations and live recordings:
each version (varied as ``cover``) plays a contiguous part of its work, a drawn share of 20-50%
of a 60-180 s track, and the rest of the track is other music (pieces composed for that track
alone, each with its own instruments). Versions of one work play different, partly overlapping
parts of it, so some pairs share little. ``--variation partial-arrangement`` also re-arranges each
version (as ``arrangement``). ``--seconds`` is then the length of the whole work (about 90 s lets
parts differ); ``make_corpus`` writes where each version plays its work to ``<out>/spans.json``
(``Layout``).

    python -m lib.synth --out data/demo/audio --works 40 --versions 4 --seconds 40

writes the ``folder`` layout ``<out>/<work>/<version>.<ext>``, rotating the formats (wav, flac,
mp3, m4a, ogg) so every decoder path is used.
"""

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
import dataclasses
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
VARIATIONS = ("cover", "arrangement", "same-form", "partial", "partial-arrangement")
PARTIAL = ("partial", "partial-arrangement")  # the weak-label modes
TRACK_SECONDS = (60.0, 180.0)  # length of a partial version
WORK_SHARE = (0.2, 0.5)  # share of a partial version's track that its work fills
SPANS_FILE = "spans.json"  # where the versions of a partial corpus play their work
FADE_S = 0.5  # cross-fade between a partial version's work and the other music
# accompaniment: chords held, arpeggiated (eighths), on the off-beats, or short stabs
CHORD_PATTERNS = ("sustain", "arpeggio", "offbeat", "stabs")
# chord tones in scale steps from the chord's root (7 = the root an octave up)
VOICINGS = {
    "close": (0, 2, 4),
    "first-inversion": (2, 4, 7),
    "second-inversion": (4, 7, 9),
    "open": (0, 4, 9),
    "seventh": (0, 2, 4, 6),
}
# drum grooves: per beat of the bar, "k" kick, "s" snare, "-" nothing; "h" adds eighth hi-hats
DRUM_PATTERNS = ("basic", "four-on-floor", "half-time", "busy")
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
    seconds_per_section = SECTION_BARS * beats_per_bar * 60 / bpm
    nsections = max(3, round(target_seconds / seconds_per_section))
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
        chord_pattern="arpeggio" if rng.random() < 0.4 else "sustain",
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


@dataclass(frozen=True)
class Layout:
    """Where a partial version plays its work: sections ``first`` to ``last - 1`` of the piece's
    form, from ``start`` to ``end`` seconds of a track of ``duration`` seconds; the rest of the
    track is music of pieces drawn from ``filler_seed``."""

    first: int
    last: int
    start: float
    end: float
    duration: float
    filler_seed: int


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
    chord_pattern: str  # one of CHORD_PATTERNS
    bass_pattern: str  # "whole", "beats", "root-fifth"
    drums: bool
    melody_octave: int
    noise_db: float  # signal-to-noise ratio
    reverb: float  # wet level
    reverb_s: float  # decay time
    tilt: float  # spectral tilt of the EQ: < 0 darker, > 0 brighter
    gain: float  # output peak
    voicing: str = "close"  # one of VOICINGS
    drum_pattern: str = "basic"  # one of DRUM_PATTERNS
    ornament: float = 0.0  # probability that a melody note of a beat or more gets an ornament
    layout: Layout | None = None  # partial versions: where the work plays in the track


def check_variation(variation):
    if variation not in VARIATIONS:
        raise ValueError(f"variation must be one of {', '.join(VARIATIONS)}, got {variation!r}")


def vary(piece, rng, variation="cover"):
    """Random cover-like changes of a piece: key, tempo, structure and mix always; the lead
    instrument in a quarter of the versions (the rest of the arrangement is the piece's own, as
    the band's sound usually survives a cover: a demo model learns key, tempo and structure
    invariance in minutes, arrangement invariance takes far more data).

    ``variation="arrangement"`` re-arranges every version on top of that (``rearrange``);
    ``variation="same-form"`` keeps the piece's form; ``variation="partial"`` plays a part of the
    piece inside other music (``partial_layout``), ``"partial-arrangement"`` also re-arranges it.
    The draws of ``cover`` come first and are the same in every mode, so a version's key, tempo
    and mix do not depend on it."""
    check_variation(variation)
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
    version = Version(
        transpose=int(rng.integers(-6, 7)),
        tempo=float(rng.uniform(0.8, 1.25)),
        form=form,
        **draw_mix(rng),
        **arrangement,
    )
    if variation == "same-form":
        return dataclasses.replace(version, form=list(piece.form))
    if variation in PARTIAL:
        version = dataclasses.replace(version, form=list(piece.form))
        if variation == "partial-arrangement":
            version = rearrange(version, rng)
        layout = partial_layout(piece, version, rng)
        return dataclasses.replace(
            version, form=list(piece.form[layout.first : layout.last]), layout=layout
        )
    return rearrange(version, rng) if variation == "arrangement" else version


def draw_mix(rng):
    """A recording's random mix, the fields ``mix`` reads: signal-to-noise ratio, reverb level
    and decay, EQ tilt and peak level."""
    return dict(
        noise_db=float(rng.uniform(15, 45)),
        reverb=float(rng.uniform(0.0, 0.4)),
        reverb_s=float(rng.uniform(0.2, 1.5)),
        tilt=float(rng.uniform(-1, 1)),
        gain=float(rng.uniform(0.4, 0.9)),
    )


def section_seconds(piece, tempo=1.0):
    """Length in seconds of one section of ``piece`` played at ``tempo`` times its own."""
    return SECTION_BARS * piece.beats_per_bar * 60.0 / (piece.bpm * tempo)


def partial_layout(piece, version, rng, track_seconds=TRACK_SECONDS, share=WORK_SHARE):
    """A random ``Layout`` of a partial version of ``piece``, its sections at ``version``'s
    tempo (``draw_layout``)."""
    length = section_seconds(piece, version.tempo)
    return draw_layout(length, len(piece.form), rng, track_seconds, share)


def draw_layout(unit_seconds, units, rng, track_seconds=TRACK_SECONDS, share=WORK_SHARE):
    """A random ``Layout``: a track of ``track_seconds`` (min, max), of which the work fills a
    ``share`` (min, max) as consecutive units (sections, bars) of ``unit_seconds`` each, at least
    one and at most all ``units`` of them (so a short work fills less), placed anywhere."""
    duration = float(rng.uniform(*track_seconds))
    wanted = float(rng.uniform(*share)) * duration
    count = int(np.clip(round(wanted / unit_seconds), 1, units))
    first = int(rng.integers(0, units - count + 1))
    duration = max(duration, count * unit_seconds)
    start = float(rng.uniform(0, duration - count * unit_seconds))
    seed = int(rng.integers(0, 2**31))
    return Layout(first, first + count, start, start + count * unit_seconds, duration, seed)


def rearrange(version, rng):
    """The version with a new arrangement: every instrument and envelope, the accompaniment
    pattern, the voicing of the chords, the bass line, the drums and their groove, the melody's
    octave, and ornaments on the melody."""
    fresh = _arrangement(rng)
    fresh["chord_pattern"] = str(rng.choice(CHORD_PATTERNS))
    fresh["drums"] = bool(rng.random() < 0.7)
    return dataclasses.replace(
        version,
        **fresh,
        voicing=str(rng.choice(list(VOICINGS))),
        drum_pattern=str(rng.choice(DRUM_PATTERNS)),
        ornament=float(rng.uniform(0.2, 0.6)),
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


def _add_drums(out, sr, beat_s, nbeats, beats_per_bar, rng, pattern="basic"):
    kick_n, snare_n, hat_n = int(0.15 * sr), int(0.12 * sr), int(0.04 * sr)
    t = np.arange(kick_n) / sr
    kick = np.sin(2 * np.pi * (50 * t + 60 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.05)
    snare = rng.standard_normal(snare_n) * np.exp(-np.arange(snare_n) / (0.04 * sr))
    hat = None
    if pattern == "busy":  # drawn only for this groove: the others keep their random stream
        hat = np.diff(rng.standard_normal(hat_n + 1)) * np.exp(-np.arange(hat_n) / (0.01 * sr))
    for b in range(nbeats):
        for offset, drum, level in _drum_hits(b % beats_per_bar, beats_per_bar, pattern):
            sound = {"k": kick, "s": snare, "h": hat}[drum]
            start = int((b + offset) * beat_s * sr)
            end = min(len(out), start + len(sound))
            if end > start:
                out[start:end] += level * sound[: end - start]


def _drum_hits(beat, beats_per_bar, pattern):
    """[(offset in beats, "k" | "s" | "h", level)] of one beat of a drum groove."""
    if pattern == "basic":
        kick = beat in (0, beats_per_bar // 2 + 1)
        return [(0.0, "k", 0.5) if kick else (0.0, "s", 0.25)]
    if pattern == "four-on-floor":
        return [(0.0, "k", 0.5)] + ([(0.0, "s", 0.25)] if beat % 2 else [])
    if pattern == "half-time":
        if beat == 0:
            return [(0.0, "k", 0.5)]
        return [(0.0, "s", 0.3)] if beat == beats_per_bar // 2 else []
    hits = [(0.0, "h", 0.15), (0.5, "h", 0.1)]  # busy: eighth hi-hats, kick and snare between
    if beat == 0 or beat == beats_per_bar - 1:
        hits.append((0.0 if beat == 0 else 0.5, "k", 0.5))
    elif beat % 2:
        hits.append((0.0, "s", 0.25))
    return hits


def render(piece, version, sr=16000, rng=None):
    """Audio (T,) float32 of one version (of ``version.layout.duration`` seconds for a partial
    version)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if version.layout is None:
        dry = _render_dry(piece, version, sr, rng)
    else:
        dry = _render_partial(piece, version, sr, rng)
    return mix(dry, version, sr, rng)


def _render_partial(piece, version, sr, rng):
    """The unmixed track of a partial version: its work's sections from ``layout.start``, another
    piece before them and a third after them (``_filler``), cross-faded over ``FADE_S``."""
    layout = version.layout
    out = np.zeros(int(round(layout.duration * sr)))
    start, end = int(round(layout.start * sr)), int(round(layout.end * sr))
    fillers = np.random.default_rng(layout.filler_seed)
    fade = int(FADE_S * sr)
    if start > 0:
        before = _filler(version, start + fade, sr, fillers)[-(start + fade) :]
        out[: start + fade] += before * fade_gain(len(before), fade, out_at_end=True)
    work = _render_dry(piece, version, sr, rng)[: len(out) - start]
    out[start : start + len(work)] += work
    if end < len(out):
        after = _filler(version, len(out) - end, sr, fillers)
        out[end:] += after * fade_gain(len(after), fade, out_at_end=False)
    return out


def _filler(version, n, sr, rng):
    """``n`` samples of a piece composed for this track alone, with its own instruments (as in a
    compilation or a medley: the other music says nothing of the work, not even by its sound),
    in another key at its own tempo, its form repeated as needed."""
    piece = compose(rng, n / sr + 10.0)
    repeats = 1 + int(n / sr // (len(piece.form) * section_seconds(piece)))
    other = filler_version(version, piece, repeats, int(rng.integers(-6, 7)))
    x = _render_dry(piece, other, sr, rng)
    return np.pad(x, (0, max(0, n - len(x))))[:n]


def filler_version(version, piece, repeats, transpose):
    """How a filler ``piece`` plays in ``version``'s track: its own arrangement, ``transpose``
    semitones away, at its own tempo, its form ``repeats`` times (the mix is the track's)."""
    return dataclasses.replace(
        version,
        **piece.arrangement,
        voicing="close",
        drum_pattern="basic",
        ornament=0.0,
        transpose=transpose,
        tempo=1.0,
        form=list(piece.form) * repeats,
        layout=None,
    )


def fade_gain(n, fade, out_at_end):
    """(n,) gain: 1, with a linear fade of ``fade`` samples out at the end or in at the start."""
    gain = np.ones(n)
    ramp = np.linspace(0.0, 1.0, min(fade, n))
    if out_at_end:
        gain[n - len(ramp) :] = ramp[::-1]
    else:
        gain[: len(ramp)] = ramp
    return gain


def _render_dry(piece, version, sr, rng):
    """The unmixed audio (T,) float64 of ``version.form`` played from the start."""
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
            voicing = VOICINGS[version.voicing]
            chord = [midi_of(piece, root + d, 0, version.transpose) for d in voicing]
            for start, length, note, env, amp in _chord_notes(chord, version, bar_beats):
                _add_note(
                    out,
                    sr,
                    bar_start + start * beat_s,
                    length * beat_s,
                    hz(note),
                    version.chord_timbre,
                    env,
                    amp,
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
        for start, length, degree, octave in _ornamented(section.melody, version.ornament, rng):
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
        _add_drums(out, sr, beat_s, total_beats, bar_beats, rng, version.drum_pattern)
    return out


def _chord_notes(chord, version, bar_beats):
    """[(start beat in the bar, length in beats, MIDI note, envelope, amplitude)] of one bar of
    accompaniment playing the MIDI notes ``chord``."""
    pattern, n = version.chord_pattern, len(chord)
    if pattern == "sustain":
        return [(0.0, bar_beats, note, version.chord_env, 0.1) for note in chord]
    if pattern == "arpeggio":  # eighths up the chord, then up again an octave higher
        return [
            (b / 2, 0.5, chord[b % n] + (12 if b % (2 * n) >= n else 0), "pluck", 0.12)
            for b in range(2 * bar_beats)
        ]
    if pattern == "offbeat":
        return [(b + 0.5, 0.5, note, "pluck", 0.09) for b in range(bar_beats) for note in chord]
    hits = [0.0, 1.5] + ([2.5] if bar_beats > 3 else [])  # stabs
    return [(b, 0.4, note, "piano", 0.1) for b in hits for note in chord]


def _ornamented(melody, probability, rng):
    """The melody with, for a note of a beat or more with ``probability``, an eighth before it
    taken from its length: a neighbour note (a step above or below) or a passing note from the
    previous one. No random draw at all when ``probability`` is 0 (the cover corpus)."""
    if probability <= 0:
        return melody
    notes, previous = [], None
    for start, length, degree, octave in melody:
        if length >= 1.0 and rng.random() < probability:
            if previous is not None and abs(previous - degree) >= 2:
                grace = degree + (1 if previous > degree else -1)  # passing from above / below
            else:
                grace = degree + int(rng.choice([-1, 1]))
            notes.append((start, 0.5, grace, octave))
            start, length = start + 0.5, length - 0.5
        notes.append((start, length, degree, octave))
        previous = degree
    return notes


def mix(x, version, sr, rng):
    """The recording of the unmixed ``x`` (T,): EQ tilt, reverb, noise and peak level from
    ``version``'s fields ``tilt``, ``reverb``, ``reverb_s``, ``noise_db`` and ``gain``; float32."""
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


def rendered_versions(w, versions, seconds, seed, sr, variation="cover"):
    """(piece, version, audio) of each of the first ``versions`` versions of work ``w``, in corpus
    order (see ``work_piece``), varied by ``vary``'s ``variation``; audio is float32 (T,)."""
    rng, piece = work_piece(w, seed, seconds)
    for _ in range(versions):
        version = vary(piece, rng, variation)
        yield piece, version, render(piece, version, sr, rng)


def render_work(out, w, versions, seconds, seed, sr, formats, variation="cover"):
    """Render and write the versions of work ``w`` (``rendered_versions``).

    Returns (number of files, seconds of audio, seconds rendering, seconds encoding, spans), with
    spans {relative path: ``work_span``} of the partial versions."""
    nfiles, audio_s, render_s, encode_s, spans = 0, 0.0, 0.0, 0.0, {}
    t0 = time.perf_counter()
    for v, (piece, version, x) in enumerate(
        rendered_versions(w, versions, seconds, seed, sr, variation)
    ):
        t1 = time.perf_counter()
        name = f"work{w:03d}/v{v}.{formats[(w + v) % len(formats)]}"
        write_audio(os.path.join(out, name), x, sr)
        if version.layout is not None:
            spans[name] = work_span(piece, version)
        render_s += t1 - t0
        t0 = time.perf_counter()  # the next version renders from here
        encode_s += t0 - t1
        audio_s += len(x) / sr
        nfiles += 1
    return nfiles, audio_s, render_s, encode_s, spans


def unseen_rendering(work, seed=0, seconds=40.0, sr=16000, variant=0, variation="cover"):
    """(piece, version, audio) of a version of work ``work`` of the corpus made with (``seed``,
    ``seconds``) that is not in it: the same piece, varied and mixed from another random stream."""
    _, piece = work_piece(work, seed, seconds)
    rng = np.random.default_rng([seed, work, 1_000_000 + variant])
    version = vary(piece, rng, variation)
    return piece, version, render(piece, version, sr, rng)


def unseen_version(work, seed=0, seconds=40.0, sr=16000, variant=0, variation="cover"):
    """The float32 audio of ``unseen_rendering``."""
    return unseen_rendering(work, seed, seconds, sr, variant, variation)[2]


def passages(piece, version):
    """The sections of the work that ``version`` plays, in order, as ``render`` lays them out:
    [(section name, start, end)] in seconds of the track."""
    length = section_seconds(piece, version.tempo)
    offset = version.layout.start if version.layout is not None else 0.0
    return [
        (name, offset + i * length, offset + (i + 1) * length)
        for i, name in enumerate(version.form)
    ]


def work_span(piece, version):
    """Where ``version`` plays its work, as recorded in ``spans.json`` (``layout_span`` with the
    work's sections); None for a version that is not partial."""
    if version.layout is None:
        return None
    return layout_span(version.layout, section_seconds(piece), "sections")


def layout_span(layout, unit_seconds, unit):
    """A ``Layout`` as recorded in ``spans.json``: {"start", "end", "duration"} in seconds of the
    track, {unit: [first, last]} (sections, bars) and {"work_start", "work_end"} in seconds of
    the work played at its own tempo (units of ``unit_seconds``) from its start, so that the
    parts of two versions can be compared."""
    return {
        "start": round(layout.start, 4),
        "end": round(layout.end, 4),
        "duration": round(layout.duration, 4),
        unit: [layout.first, layout.last],
        "work_start": round(layout.first * unit_seconds, 4),
        "work_end": round(layout.last * unit_seconds, 4),
    }


def make_corpus(
    out,
    works=40,
    versions=4,
    seconds=40.0,
    seed=0,
    sr=16000,
    formats=FORMATS,
    njobs=1,
    variation="cover",
):
    """Render ``works`` pieces with ``versions`` versions each into ``out``/<work>/<version>.<ext>,
    in ``njobs`` processes (-1: one per core), varied by ``vary``'s ``variation``.

    Returns (number of files, seconds of audio, seconds spent rendering, seconds spent encoding).
    A partial corpus also gets ``<out>/spans.json``: {"<work>/<version>.<ext>": ``work_span``}.
    """
    check_variation(variation)
    jobs = [
        (out, w, versions, seconds, seed, sr, tuple(formats), variation) for w in range(works)
    ]
    results = render_works(render_work, jobs, njobs, out)
    nfiles, audio_s, render_s, encode_s = (sum(column) for column in list(zip(*results))[:4])
    return nfiles, audio_s, render_s, encode_s


def render_works(render, jobs, njobs, out):
    """``render(*job)`` for every job, in ``njobs`` processes (-1: one per core); each result
    ends with the {file: span} of its partial versions, all written to ``<out>/spans.json``
    when there are any. Returns the results in job order."""
    njobs = (os.cpu_count() or 1) if njobs == -1 else max(1, int(njobs))
    if njobs == 1 or len(jobs) == 1:
        results = [render(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(min(njobs, len(jobs))) as pool:
            results = list(pool.map(render, *zip(*jobs)))
    spans = {name: span for *_, work_spans in results for name, span in work_spans.items()}
    if spans:
        with open(os.path.join(out, SPANS_FILE), "w") as handle:
            json.dump(spans, handle, indent=1, sort_keys=True)
    return results


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
    parser.add_argument(
        "--variation",
        choices=VARIATIONS,
        default="cover",
        help="cover: key, tempo, structure, mix and sometimes the lead instrument (the demo); "
        "arrangement: also new instruments, accompaniment, voicings, drums and ornaments; "
        "same-form: as cover, but every version keeps the piece's form; "
        "partial: cover's changes on a 20-50%% part of the work inside a 60-180 s track of "
        "other music (weak labels; --seconds is then the work's length; spans.json says where); "
        "partial-arrangement: the same, re-arranged",
    )
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
        args.variation,
    )
    print(
        f"Wrote {nfiles} files ({audio_s / 60:.1f} min of audio) to {args.out}: rendering "
        f"{audio_s / render_s:.0f}x real time, encoding {audio_s / encode_s:.0f}x real time "
        "(per process)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
