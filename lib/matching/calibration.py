"""Calibrated "is there a version of this clip in the catalogue?" decisions.

A catalogue answers every query with its closest tracks; whether the closest one is a version
or only the least unrelated track depends on a distance threshold. Calibration measures, on a
labelled set of tracks (works with several versions, e.g. a validation partition), the two
distances that decide it, for clips drawn like real queries (the catalogue's window length and
hop, ``clip_len`` seconds at random places):

- the distance from a clip to the closest *other* version of its work (its own track left out);
- the distances from the clip to every track of other works (non-versions).

A clip without a version in a catalogue of N tracks is a false alarm at threshold D when one of
its N non-version distances is <= D. For each clip, the chance of that for N tracks drawn from
its measured non-version distances is 1 - C(a, N) / C(n, N) (a of its n distances above D;
(a / n)^N when N > n, an extrapolation), and the false-alarm rate is its mean over clips. So the
threshold follows the catalogue's size: a larger catalogue offers more chances of a close
non-version and gets a lower threshold for the same rate. The recall is the share of clips with
a version whose closest version is within D.

The measurements are kept as ``calibration-<digest>.npz`` in the catalogue folder, named by its
``catalogue.json`` (``lib/matching/catalogue.py``), so thresholds can be recomputed as the
catalogue grows.
"""

import functools
import hashlib
import io
import math
import os
import time

import numpy as np

from lib import reductions, store
from lib.audio import AudioError, get_info, load_audio
from lib.errors import RunError, UsageError
from lib.files import atomic_write
from lib.matching import catalogue

CALIBRATION_DIR = "calibration"  # under a catalogue: embeddings of the labelled set


class CalibrationError(RunError):
    """A calibration cannot be measured or read; the message names the file or folder."""


###################################################################################################
# False-alarm rate and threshold from measured distances
###################################################################################################


lgamma = np.vectorize(math.lgamma, otypes=[np.float64])  # log Gamma of each element


def false_alarm_rate(nonversion, counts, size, threshold):
    """Mean over clips of the chance that a catalogue of ``size`` tracks, none of them a version
    of the clip, holds one within ``threshold``.

    nonversion: (C, n_max) each clip's non-version distances, sorted, padded with +inf;
    counts: (C,) how many of them are real (n_i)."""
    counts = np.asarray(counts, dtype=np.int64)
    within = (np.asarray(nonversion) <= threshold).sum(axis=1)  # padding (+inf) never is
    above = counts - within
    return float(np.mean(1.0 - none_within(above, counts, size)))


def none_within(above, counts, size):
    """(C,) chance that ``size`` draws without replacement from n_i = ``counts`` values, a_i =
    ``above`` of them above the threshold, are all above it: C(a, N) / C(n, N); with
    replacement, (a / n)^N, where N > n (more tracks than were measured)."""
    above = np.asarray(above, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    n = float(size)
    out = np.zeros(len(counts))
    exact = counts >= n
    ok = exact & (above >= n)
    a, c = above[ok], counts[ok]
    out[ok] = np.exp(lgamma(a + 1) - lgamma(a - n + 1) - lgamma(c + 1) + lgamma(c - n + 1))
    rest = ~exact & (counts > 0)
    out[rest] = (above[rest] / counts[rest]) ** n
    return out


def threshold_for(nonversion, counts, size, target):
    """The largest measured non-version distance D at which ``false_alarm_rate`` <= ``target``
    (False-alarm rate is a step function of D that only grows), or -inf when even the closest
    measured non-version gives more (then nothing is reported as a version)."""
    values = np.unique(np.asarray(nonversion)[np.isfinite(nonversion)])
    lo, hi = 0, len(values)  # first index whose rate exceeds the target
    while lo < hi:
        mid = (lo + hi) // 2
        if false_alarm_rate(nonversion, counts, size, values[mid]) <= target:
            lo = mid + 1
        else:
            hi = mid
    return float(values[lo - 1]) if lo > 0 else float("-inf")


def recall_at(true, threshold):
    """Share of clips with a version (finite ``true``) whose closest version is within it."""
    true = np.asarray(true, dtype=np.float64)
    found = true[np.isfinite(true)]
    return float(np.mean(found <= threshold)) if len(found) else float("nan")


###################################################################################################
# Measuring on a labelled set
###################################################################################################


def draw_clips(durations, clip_len, per_track, seed):
    """[(track, start s)]: ``per_track`` clip starts per track, uniform over the places where a
    ``clip_len`` s clip fits (a shorter track gives one clip from its start)."""
    rng = np.random.default_rng(seed)
    clips = []
    for track, duration in enumerate(durations):
        room = float(duration) - clip_len
        if room <= 0:
            clips.append((track, 0.0))
            continue
        clips += [(track, float(s)) for s in np.sort(rng.uniform(0.0, room, per_track))]
    return clips


def measure(cliques, clips, distances_to_all, progress=None):
    """The calibration arrays for clips of a labelled set.

    cliques: (N,) work label of each labelled track;
    clips: iterable of (track row, (Sq, D) window embeddings of a clip of that track);
    distances_to_all: (Sq, D) windows -> (N,) track distances to every labelled track;
    progress: called once per clip (a tqdm update), if given.

    Returns (nonversion (C, n_max), counts (C,), true (C,): the closest other version's
    distance, +inf for a clip whose work has no other track)."""
    cliques = np.asarray(cliques)
    rows, true = [], []
    for track, windows in clips:
        dist = np.asarray(distances_to_all(windows), dtype=np.float64)
        same = cliques == cliques[track]
        same[track] = False  # the clip's own track is left out
        other = cliques != cliques[track]
        rows.append(dist[other])
        true.append(float(dist[same].min()) if same.any() else np.inf)
        if progress is not None:
            progress()
    nonversion, counts = pad_sorted(rows)
    return nonversion, counts, np.array(true, dtype=np.float32)


###################################################################################################
# The measurements on disk and the decisions they give
###################################################################################################


@functools.lru_cache(maxsize=8)
def read_measurements(path):
    """{"nonversion", "counts", "true"} arrays of a calibration file (kept in memory: files are
    never changed, a new calibration gets a new name)."""
    try:
        with np.load(path) as data:
            out = {k: data[k] for k in ("nonversion", "counts", "true")}
    except (OSError, ValueError, KeyError) as err:
        raise CalibrationError(f"{path}: unreadable calibration file ({err})") from err
    return out


def write_measurements(folder, nonversion, counts, true):
    """Save the arrays as ``folder/calibration-<digest>.npz``; returns the file's name."""
    buffer = io.BytesIO()
    np.savez(buffer, nonversion=nonversion, counts=counts, true=true)
    data = buffer.getvalue()
    name = f"calibration-{hashlib.sha1(data).hexdigest()[:12]}.npz"
    atomic_write(os.path.join(folder, name), lambda h: h.write(data))
    return name


def pad_sorted(rows):
    """List of 1-D arrays -> ((C, n_max) sorted, +inf padded, (C,) lengths)."""
    counts = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.full((len(rows), max(1, int(counts.max(initial=0)))), np.inf, dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = np.sort(row)
    return out, counts


class Decision:
    """The catalogue's calibrated decision: ``threshold`` for its size, the false-alarm rate
    ``target`` and the ``recall`` measured at it, and ``false_alarm(d)`` for any distance."""

    def __init__(self, calibration, folder, size):
        self.calibration = calibration
        self.size = int(size)
        self.target = float(calibration["target_false_alarm"])
        data = read_measurements(os.path.join(folder, calibration["file"]))
        self._nonversion, self._counts = data["nonversion"], data["counts"]
        self.threshold = threshold_for(self._nonversion, self._counts, self.size, self.target)
        self.recall = recall_at(data["true"], self.threshold)
        self.measured_tracks = int(np.max(self._counts, initial=0))

    def false_alarm(self, distance):
        """Chance that a clip with no version in this catalogue has a match this close."""
        return false_alarm_rate(self._nonversion, self._counts, self.size, distance)

    def threshold_text(self):
        """The threshold and what it keeps, in words."""
        return (
            f"calibrated threshold {self.threshold:.4f}: {100 * self.target:g}% false alarms, "
            f"{100 * self.recall:.1f}% recall"
        )

    def extrapolated(self):
        """Whether the catalogue has more tracks than any clip had non-versions measured."""
        return self.size > self.measured_tracks


def summary(calibration, decision):
    """Text lines describing a calibration and its decision for the catalogue now."""
    when = calibration.get("created", "?")
    lines = [
        f"calibrated {when} on {calibration['clips']} clips of {calibration['clip_len']:g} s "
        f"from {calibration['labelled_tracks']} labelled tracks ({calibration['source']})",
        f"for {decision.size} catalogue tracks: threshold {decision.threshold:.4f} keeps "
        f"{100 * decision.target:g}% false alarms and {100 * decision.recall:.1f}% recall",
    ]
    if decision.extrapolated():
        lines.append(
            f"warning: the catalogue has more tracks ({decision.size}) than the calibration "
            f"measured per clip ({decision.measured_tracks}): the rate is extrapolated; "
            "calibrate with a larger labelled set"
        )
    return lines


def plot(path, true, nonversion, counts, decision):
    """PNG at ``path``: the distances of the closest version and of the closest non-version of
    each clip (histograms, the threshold marked), and the false-alarm rate vs recall for the
    catalogue's size as the threshold moves (the chosen point marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true = np.asarray(true, dtype=np.float64)
    true = true[np.isfinite(true)]
    closest = np.asarray(nonversion)[:, 0]
    closest = closest[np.isfinite(closest)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(min(true.min(initial=0), closest.min()), max(closest.max(), 1e-9), 40)
    left.hist(true, bins=bins, alpha=0.6, label=f"closest version ({len(true)} clips)")
    left.hist(closest, bins=bins, alpha=0.6, label="closest non-version (all measured tracks)")
    label = f"threshold {decision.threshold:.3f}"
    left.axvline(decision.threshold, color="k", ls="--", label=label)
    left.set_xlabel("track distance")
    left.set_ylabel("clips")
    left.legend(fontsize=8)
    grid = np.quantile(np.concatenate([true, closest]), np.linspace(0, 1, 60))
    rates = [false_alarm_rate(nonversion, counts, decision.size, d) for d in grid]
    recalls = [recall_at(true, d) for d in grid]
    right.plot(rates, recalls, "-")
    right.plot([decision.target], [decision.recall], "o", color="k")
    right.annotate(
        f"  {100 * decision.target:g}% false alarms, {100 * decision.recall:.1f}% recall",
        (decision.target, decision.recall),
        fontsize=8,
    )
    right.set_xlabel(f"false-alarm rate (catalogue of {decision.size} tracks)")
    right.set_ylabel("recall")
    right.set_xlim(0, 1)
    right.set_ylim(0, 1.02)
    right.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda h: h.write(buffer.getvalue()))


def created_now():
    return time.strftime("%Y-%m-%d %H:%M:%S")


###################################################################################################
# Measuring a catalogue's calibration
###################################################################################################


def calibrate(
    state,
    embedder,
    meta,
    audio_root,
    partition="valid",
    target=0.05,
    clip_len=20.0,
    clips_per_track=2,
    seed=0,
    nworkers=2,
    plot_path=None,
):
    """Measure and store the "no version" threshold of the loaded catalogue ``state`` (a
    ``catalogue.CatalogueState``) on the labelled ``partition`` of the metadata file ``meta``
    (audio under ``audio_root``): ``embedder`` (an ``api.Embedder`` of the catalogue's
    checkpoint) embeds its tracks with the catalogue's settings (kept under
    ``<catalogue>/calibration``: a stopped run resumes) and clips
    drawn from them. Returns [(file, reason)] of unreadable files, which are left out."""
    # measuring embeds audio files (the PyTorch job): imported here, so that reading a
    # calibration (``Decision``) needs no torch
    from tqdm import tqdm

    from lib.matching import inference

    if not 0 < target < 1:
        raise UsageError(f"false-alarm target must be between 0 and 1, got {target}")
    if clip_len <= 0 or clips_per_track < 1:
        raise UsageError("clip length must be > 0 s and clips per track >= 1")
    folder, settings = state.folder, state.settings
    tracks = labelled_tracks(meta, audio_root, partition)
    win_len, hop = float(settings["win_len"]), float(settings["hop_size"])
    work = os.path.join(folder, CALIBRATION_DIR)
    jobs = [(t["source"], inference.output_for_source(work, t["source"])) for t in tracks]
    summary = embedder.embed_folder_into(work, jobs, win_len, hop, nworkers)
    failed = {src for src, _ in summary["failed"]}
    kept = [(t, dst) for t, (_, dst) in zip(tracks, jobs) if t["source"] not in failed]
    cliques = [t["clique"] for t, _ in kept]
    if len(set(cliques)) < 2 or len(cliques) == len(set(cliques)):
        raise CalibrationError(
            f"{meta}: partition {partition!r} needs at least two works and one with two "
            "readable versions"
        )
    z, mask = store.stack([inference.read_output(dst) for _, dst in kept])
    labelled = catalogue.CatalogueState(work, settings, [t for t, _ in kept], z, mask, None, None)
    durations = [get_info(t["source"]).duration for t, _ in kept]  # the file as it is now
    draws = draw_clips(durations, clip_len, clips_per_track, seed)
    rows = np.arange(len(kept))
    redux = reductions.parse_redux(settings["redux"])

    def clips():
        for track, start in draws:
            source = kept[track][0]["source"]
            try:
                x = load_audio(source, embedder.samplerate, start, clip_len)
            except AudioError as err:
                raise CalibrationError(str(err)) from err
            yield track, embedder.embed_waveform(x, win_len, hop)

    with tqdm(total=len(draws), desc="Calibration clips", ncols=80, ascii=True) as bar:
        nonversion, counts, true = measure(
            cliques,
            clips(),
            lambda q: catalogue.track_distances(
                labelled, q, rows, redux, scores=embedder.engine.track_scores
            ),
            progress=lambda: bar.update(1),
        )
    name = write_measurements(folder, nonversion, counts, true)
    calibration = {
        "file": name,
        "settings": {k: settings[k] for k in catalogue.CALIBRATION_SETTINGS},
        "target_false_alarm": float(target),
        "clip_len": float(clip_len),
        "clips": int(len(draws)),
        "labelled_tracks": len(kept),
        "source": f"{os.path.abspath(meta)}, partition {partition}",
        "seed": int(seed),
        "created": created_now(),
    }
    size = len(state.tracks)
    decision = Decision(calibration, folder, size)
    calibration.update(catalogue_tracks=size, threshold=decision.threshold, recall=decision.recall)
    catalogue.set_calibration(folder, calibration)
    if plot_path:
        plot(plot_path, true, nonversion, counts, decision)
    return summary["failed"]


def labelled_tracks(meta, audio_root, partition):
    """[{"id", "source", "clique"}] of the versions of ``partition`` in the metadata file
    ``meta``; files that are missing are an error naming them."""
    from lib.metadata import load_metadata  # a torch file: see ``calibrate``

    info, splits = load_metadata(meta)
    if partition not in splits:
        raise UsageError(f"{meta}: no partition {partition!r} (has {', '.join(sorted(splits))})")
    tracks = []
    for clique, keys in sorted(splits[partition].items()):
        for key in keys:
            song = info[key]
            source = os.path.join(audio_root, song["filename"])
            tracks.append({"id": key, "source": source, "clique": str(clique)})
    missing = [t["source"] for t in tracks if not os.path.isfile(t["source"])]
    if missing:
        raise UsageError(
            f"{len(missing)} audio file(s) of {meta} not found under {audio_root}, e.g. "
            + ", ".join(missing[:3])
        )
    return tracks
