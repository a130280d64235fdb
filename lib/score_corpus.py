"""Versions of real compositions: scores of music21's corpus played through a General MIDI
soundfont by FluidSynth, varied the way ``lib.synth`` varies its pieces, so that a benchmark does
not rest on one generator's habits.

A work is one composition: one movement of each of Palestrina's masses (the longest file of the
mass, so two works never come from one mass, whose movements share themes), Monteverdi's
madrigals and the Trecento pieces of the corpus. Each version plays it with its own instruments
(a General MIDI program per voice), in another key (+/-6 semitones), at another tempo (0.8-1.25x)
and mix (noise, reverb, EQ, level: ``lib.synth.mix``). With ``--variation partial`` (the default)
a work is the composition's first bars up to ``--work_seconds`` (90 s at its own tempo, as
``lib.synth``'s partial works: with whole compositions, half of them over 3.5 minutes, the
versions of a work mostly shared no bar), and a version plays a part of it that fills 20-50% of
a 60-180 s track (whole bars), the rest of the track being other music played by the same
instruments: Bach chorales and the folk tunes of Ryan's Mammoth Collection, each of them used by
one track only (weak labels, as ``lib.synth --variation partial``; ``<out>/spans.json`` says
where, in bars). ``--variation arrangement`` plays the whole work from its start, up to
``--max_seconds``.

    python -m lib.score_corpus --out data/scores/audio --works 160 --versions 4

needs music21 (``requirements.txt``), FluidSynth and the FluidR3 General MIDI soundfont (Debian's
``fluidsynth`` and ``fluid-soundfont-gm``: ``bash install_requirements.sh --scores``).
"""

import argparse
import dataclasses
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from lib import synth
from lib.audio import write_audio

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
FLUIDSYNTH = "fluidsynth"
VARIATIONS = ("partial", "arrangement")
# General MIDI programs (0-based) a voice may be played by: pianos, organs, guitars, strings,
# choir, brass, reeds, flutes, mallets and synth pads
PROGRAMS = (0, 1, 4, 6, 11, 16, 19, 21, 24, 25, 40, 41, 42, 46, 48, 49, 52, 56, 57, 60, 61, 65,
            68, 70, 71, 73, 74, 79, 88, 89)
TICKS = 480  # MIDI ticks per quarter note
OWN_QPM = (90.0, 130.0)  # a work's own tempo (quarters per minute) when its score has none
WORK_SECONDS = 90.0  # partial: a work is its composition's first bars up to this, at its own tempo
FILLER_SOURCES = ("bach", "ryansMammoth")
SCORE_EXTENSIONS = (".krn", ".mxl", ".xml", ".abc")


class ScoreCorpusError(RuntimeError):
    """What is missing to render the corpus (FluidSynth, the soundfont, enough scores)."""


@dataclass(frozen=True)
class Score:
    """The notes of a composition: [(start, length in quarters, MIDI pitch, voice)], its bar in
    quarters, its length in quarters, its number of voices and its tempo (quarters per minute;
    None when the score gives none)."""

    name: str
    notes: tuple
    bar: float
    length: float
    voices: int
    qpm: float | None


@dataclass(frozen=True)
class ScoreVersion:
    """How one version plays its work (fields that ``lib.synth.mix`` reads included)."""

    transpose: int
    qpm: float  # quarters per minute
    programs: tuple  # General MIDI program of each voice (cycled when a score has more)
    noise_db: float
    reverb: float
    reverb_s: float
    tilt: float
    gain: float
    layout: synth.Layout | None = None  # partial versions: where the work's bars play


###################################################################################################
# Scores
###################################################################################################


def check_tools():
    """ScoreCorpusError unless FluidSynth and the soundfont are installed."""
    missing = []
    if shutil.which(FLUIDSYNTH) is None:
        missing.append("the fluidsynth program")
    if not os.path.isfile(SOUNDFONT):
        missing.append(f"the soundfont {SOUNDFONT}")
    if missing:
        raise ScoreCorpusError(
            f"{' and '.join(missing)} not found: install them with "
            "'bash install_requirements.sh --scores' (Debian's fluidsynth and fluid-soundfont-gm)"
        )


def corpus_paths(composer):
    """Sorted paths of the scores of one composer (or collection) of music21's corpus."""
    from music21 import corpus

    paths = [str(p) for p in corpus.getComposer(composer)]
    return sorted(p for p in paths if os.path.splitext(p)[1] in SCORE_EXTENSIONS)


def work_paths():
    """The compositions that can be works, sorted: the longest file of each Palestrina mass, then
    Monteverdi's madrigals and the Trecento pieces."""
    masses = {}
    for path in corpus_paths("palestrina"):
        with open(path, errors="replace") as handle:
            head = handle.read(2000)
        found = re.search(r"^!!!OPR:\s*(.+)$", head, re.MULTILINE)
        mass = found.group(1).strip() if found else path
        masses.setdefault(mass, []).append(path)
    longest = [max(paths, key=lambda p: (os.path.getsize(p), p)) for paths in masses.values()]
    return sorted(longest) + corpus_paths("monteverdi") + corpus_paths("trecento")


def filler_paths():
    """The compositions that fill partial tracks, sorted; no work is among them."""
    return [p for source in FILLER_SOURCES for p in corpus_paths(source)]


def load_score(path):
    """The ``Score`` of a score file (ties merged, grace notes left out)."""
    from music21 import converter, meter, stream, tempo

    parsed = converter.parse(path)
    if isinstance(parsed, stream.Opus):
        parsed = parsed.scores[0]
    parsed = parsed.stripTies()
    parts = list(parsed.parts) or [parsed]
    notes = []
    for voice, part in enumerate(parts):
        for element in part.flatten().notes:
            length = float(element.quarterLength)
            if length <= 0:
                continue
            start = float(element.getOffsetInHierarchy(part))
            for pitch in element.pitches:
                notes.append((start, length, int(pitch.midi), voice))
    if not notes:
        raise ScoreCorpusError(f"{path}: no notes")
    notes.sort()
    signatures = parsed.flatten().getElementsByClass(meter.TimeSignature)
    bar = float(signatures[0].barDuration.quarterLength) if signatures else 4.0
    marks = parsed.flatten().getElementsByClass(tempo.MetronomeMark)
    qpm = None
    if marks and marks[0].number:
        qpm = float(marks[0].getQuarterBPM() or marks[0].number)
    length = max(start + dur for start, dur, _, _ in notes)
    return Score(os.path.basename(path), tuple(notes), bar, length, len(parts), qpm)


###################################################################################################
# Versions
###################################################################################################


def own_qpm(score, rng):
    """A work's own tempo: its score's, else drawn from ``OWN_QPM``."""
    drawn = float(rng.uniform(*OWN_QPM))
    return score.qpm if score.qpm else drawn


def work_bars(score, qpm, work_seconds=WORK_SECONDS):
    """Bars of ``score`` that make its work: all of them, or (``work_seconds``) its first bars
    up to that many seconds at ``qpm`` (at least one)."""
    bars = max(1, int(np.ceil(score.length / score.bar - 1e-9)))
    if work_seconds is None:
        return bars
    return int(np.clip(np.floor(work_seconds / (score.bar * 60.0 / qpm) + 1e-9), 1, bars))


def vary(score, rng, variation="partial", base_qpm=None, work_seconds=WORK_SECONDS):
    """A random version of ``score``: key, tempo (0.8-1.25x ``base_qpm``), instruments, mix and,
    for ``partial``, where a part of its work (``work_bars`` at ``base_qpm``) plays in a longer
    track (``lib.synth.draw_layout`` over those bars)."""
    if variation not in VARIATIONS:
        raise ValueError(f"variation must be one of {', '.join(VARIATIONS)}, got {variation!r}")
    base_qpm = base_qpm or own_qpm(score, rng)
    version = ScoreVersion(
        transpose=int(rng.integers(-6, 7)),
        qpm=base_qpm * float(rng.uniform(0.8, 1.25)),
        programs=tuple(int(p) for p in rng.choice(PROGRAMS, size=max(score.voices, 1))),
        **synth.draw_mix(rng),
    )
    if variation == "partial":
        bar_seconds = score.bar * 60.0 / version.qpm
        bars = work_bars(score, base_qpm, work_seconds)
        version = dataclasses.replace(version, layout=synth.draw_layout(bar_seconds, bars, rng))
    return version


def excerpt(score, first_bar, last_bar):
    """The notes of bars ``first_bar`` to ``last_bar - 1``, from time 0, cut at the last bar."""
    start, end = first_bar * score.bar, last_bar * score.bar
    notes = []
    for onset, length, pitch, voice in score.notes:
        if start <= onset < end:
            notes.append((onset - start, min(length, end - onset), pitch, voice))
    return notes


def render_notes(notes, version, seconds, sr, transpose=None):
    """Audio (n,) float64 of ``seconds`` s: ``notes`` played by ``version``'s instruments at its
    tempo and key (or ``transpose``) through FluidSynth, cut or zero-padded."""
    n = int(round(seconds * sr))
    transpose = version.transpose if transpose is None else transpose
    with tempfile.TemporaryDirectory() as tmp:
        midi, wav = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        write_midi(midi, notes, version.programs, version.qpm, transpose)
        cmd = [FLUIDSYNTH, "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(sr)]
        cmd += ["-F", wav, "-T", "wav", SOUNDFONT, midi]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.isfile(wav):
            raise ScoreCorpusError(f"fluidsynth failed ({done.returncode}): {done.stderr[-500:]}")
        x, rate = sf.read(wav, dtype="float64", always_2d=True)
    if rate != sr:
        raise ScoreCorpusError(f"fluidsynth wrote {rate} Hz instead of {sr} Hz")
    x = x.mean(1)
    return np.pad(x, (0, max(0, n - len(x))))[:n]


def looped(notes, length, seconds, qpm):
    """``notes`` of a piece ``length`` quarters long repeated to last at least ``seconds`` s at
    ``qpm``."""
    repeats = 1 + int(seconds * qpm / 60.0 // max(length, 1e-9))
    return [(s + r * length, d, p, v) for r in range(repeats) for s, d, p, v in notes]


def render_version(score, version, sr, fillers=(), max_seconds=180.0):
    """Audio (T,) float32 of one version. Partial: the work's bars from ``layout.start``, the
    start of ``fillers[0]`` before them (its end cross-faded) and of ``fillers[1]`` after them,
    played by the version's instruments at each filler's own tempo; else the whole work up to
    ``max_seconds``."""
    layout = version.layout
    rng = np.random.default_rng(layout.filler_seed if layout else 0)
    if layout is None:
        seconds = min(score.length * 60.0 / version.qpm + 2.0, max_seconds)
        return synth.mix(render_notes(score.notes, version, seconds, sr), version, sr, rng)
    out = np.zeros(int(round(layout.duration * sr)))
    start, end = int(round(layout.start * sr)), int(round(layout.end * sr))
    fade = int(synth.FADE_S * sr)
    part = excerpt(score, layout.first, layout.last)
    work = render_notes(part, version, (len(out) - start) / sr, sr)
    out[start:] += work
    for which, (filler, span) in enumerate(zip(fillers, ((0, start), (end, len(out))))):
        count = span[1] - span[0] + (fade if which == 0 else 0)
        if span[1] <= span[0]:
            continue
        qpm = own_qpm(filler, rng)
        other = dataclasses.replace(version, qpm=qpm, layout=None)
        notes = looped(filler.notes, filler.length, count / sr, qpm)
        x = render_notes(notes, other, count / sr, sr, transpose=int(rng.integers(-6, 7)))
        x = x * synth.fade_gain(len(x), fade, out_at_end=which == 0)
        out[span[0] : span[0] + len(x)] += x[: len(out) - span[0]]
    return synth.mix(out, version, sr, rng)


def work_span(score, version, qpm):
    """Where a partial version plays its work, as in ``spans.json`` (``lib.synth.layout_span``
    in bars of the work played at its own ``qpm``); None for a whole-work version."""
    if version.layout is None:
        return None
    return synth.layout_span(version.layout, score.bar * 60.0 / qpm, "bars")


###################################################################################################
# MIDI
###################################################################################################


def _varlen(value):
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.insert(0, (value & 0x7F) | 0x80)
        value >>= 7
    return bytes(out)


def write_midi(path, notes, programs, qpm, transpose=0):
    """A standard MIDI file (format 1) of ``notes`` [(start, length in quarters, pitch, voice)]:
    one track per voice on its own channel (never the drum channel 9) with the General MIDI
    ``programs[voice % len(programs)]``, at ``qpm`` quarters per minute, ``transpose`` semitones
    away (pitches kept in 0-127)."""
    voices = sorted({v for _, _, _, v in notes}) or [0]
    tracks = [b"\x00\xff\x51\x03" + round(60_000_000 / qpm).to_bytes(3, "big") + b"\x00\xff\x2f\x00"]
    for index, voice in enumerate(voices):
        channel = index % 15
        channel += channel >= 9
        events = []
        for start, length, pitch, v in notes:
            if v != voice:
                continue
            key = int(np.clip(pitch + transpose, 0, 127))
            on, off = round(start * TICKS), round((start + length) * TICKS)
            events += [(on, 1, 0x90 | channel, key, 80), (max(off, on + 1), 0, 0x80 | channel, key, 0)]
        events.sort()
        program = programs[voice % len(programs)]
        data = b"\x00" + bytes([0xC0 | channel, program])
        now = 0
        for tick, _, status, key, velocity in events:
            data += _varlen(tick - now) + bytes([status, key, velocity])
            now = tick
        tracks.append(data + b"\x00\xff\x2f\x00")
    with open(path, "wb") as handle:
        handle.write(b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), TICKS))
        for data in tracks:
            handle.write(b"MTrk" + struct.pack(">I", len(data)) + data)


###################################################################################################
# Corpus
###################################################################################################


def corpus_plan(works, versions, seed):
    """(work paths, filler paths per track): the first ``works`` of ``work_paths`` in an order
    drawn with ``seed``, and two fillers for each of their ``versions`` versions, each filler used
    once (ScoreCorpusError if the corpus has too few)."""
    candidates = work_paths()
    if works > len(candidates):
        raise ScoreCorpusError(f"{works} works asked, music21's corpus has {len(candidates)}")
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:works]]
    pool = filler_paths()
    need = 2 * works * versions
    if need > len(pool):
        raise ScoreCorpusError(
            f"{works} works x {versions} versions need {need} filler pieces, the corpus has "
            f"{len(pool)}: ask for fewer works or versions"
        )
    order = [pool[i] for i in rng.permutation(len(pool))[:need]]
    return chosen, [order[2 * t : 2 * t + 2] for t in range(works * versions)]


def render_work(
    out, w, path, fillers, versions, seed, sr, formats, variation, max_seconds, work_seconds
):
    """Render and write the versions of work ``w`` (the score at ``path``); (files, seconds of
    audio, spans)."""
    score = load_score(path)
    rng = np.random.default_rng([seed, w])
    base_qpm = own_qpm(score, rng)
    nfiles, audio_s, spans = 0, 0.0, {}
    for v in range(versions):
        version = vary(score, rng, variation, base_qpm, work_seconds)
        extra = [load_score(p) for p in fillers[v]] if version.layout is not None else []
        x = render_version(score, version, sr, extra, max_seconds)
        name = f"work{w:03d}/v{v}.{formats[(w + v) % len(formats)]}"
        write_audio(os.path.join(out, name), x, sr)
        if version.layout is not None:
            spans[name] = {**work_span(score, version, base_qpm), "score": score.name}
        nfiles, audio_s = nfiles + 1, audio_s + len(x) / sr
    return nfiles, audio_s, spans


def make_corpus(
    out,
    works=160,
    versions=4,
    seed=0,
    sr=16000,
    formats=synth.FORMATS,
    njobs=1,
    variation="partial",
    max_seconds=180.0,
    work_seconds=WORK_SECONDS,
):
    """Render ``works`` compositions x ``versions`` versions into ``out``/<work>/<version>.<ext>
    in ``njobs`` processes (-1: one per core); a partial corpus also gets ``<out>/spans.json``.
    ``work_seconds``: ``work_bars`` (None: whole compositions). Returns (number of files,
    seconds of audio)."""
    check_tools()
    paths, fillers = corpus_plan(works, versions, seed)
    jobs = [
        (out, w, path, fillers[w * versions : (w + 1) * versions], versions, seed, sr,
         tuple(formats), variation, max_seconds, work_seconds)
        for w, path in enumerate(paths)
    ]
    results = synth.render_works(render_work, jobs, njobs, out)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Render versions of real compositions (music21's corpus, FluidSynth)."
    )
    parser.add_argument("--out", required=True, help="output folder (<out>/<work>/<version>.<ext>)")
    parser.add_argument("--works", type=int, default=160)
    parser.add_argument("--versions", type=int, default=4, help="versions per work (>= 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplerate", type=int, default=16000)
    parser.add_argument("--formats", default=",".join(synth.FORMATS), help="comma-separated")
    parser.add_argument("--njobs", type=int, default=1, help="processes (-1: one per core)")
    parser.add_argument("--variation", choices=VARIATIONS, default="partial")
    parser.add_argument(
        "--max_seconds", type=float, default=180.0, help="arrangement: longest version"
    )
    parser.add_argument(
        "--work_seconds", type=float, default=WORK_SECONDS,
        help="partial: a work is its composition's first bars up to this many seconds at its own "
        "tempo (0: the whole composition)",
    )
    args = parser.parse_args(argv)
    if args.works < 1 or args.versions < 2:
        parser.error("need --works >= 1 and --versions >= 2")
    formats = tuple(f.strip().lstrip(".") for f in args.formats.split(",") if f.strip())
    start = time.perf_counter()
    try:
        nfiles, audio_s = make_corpus(
            args.out, args.works, args.versions, args.seed, args.samplerate, formats,
            args.njobs, args.variation, args.max_seconds, args.work_seconds or None,
        )
    except ScoreCorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"Wrote {nfiles} files ({audio_s / 60:.1f} min of audio) to {args.out} in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
