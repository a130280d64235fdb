"""The training / validation / test dataset.

One item per version of the split: the version (anchor) followed by ``n_per_class - 1`` other
versions of its clique, each an excerpt of ``audiolen`` seconds. Items are flat lists
``[clique_id, song_id_1, audio_1, song_id_2, audio_2, ...]`` with audio (T,) float32 at
``samplerate``; with ``fullsongs`` only ``[clique_id, song_id, full audio]``. A feature dataset
(Da-TACOS, Cover1000: songs with ``features`` in the metadata) gives pitch classes (12, T) at
``lib.features.PCP_RATE`` frames per second instead (``input_kind`` "pcp"; ``samplerate`` is
that rate), and its test split may hold single-version works (candidates only).

A file that cannot be read while training (deleted, replaced, corrupt in a part the
preprocessing probes did not decode) is reported once in a ``BadAudioLog`` and another version
of its clique takes its place; without a log it raises.

Numeric clique ids are ``offset + position of the clique in the split``, the offset being 0 for
train, the number of train cliques for valid, and train + valid for test, so ids never collide
across splits.
"""

import csv
import os
import sys

import torch

from lib import config, schema
from lib import features as F
from lib.audio import AudioError, load_audio
from lib.audio_cache import DecodedAudioCache
from lib.metadata import RECHECK_HINT, DatasetError, load_metadata
from lib.schema import SPLITS
from lib.tensor_ops import force_length


# self-supervised views (ssl.views): two renditions of one passage, or two times of one track
VIEWS = schema.SSL_VIEWS


def label_budget(cliques, fraction, seed, source="metadata"):
    """The cliques (name -> versions) a label budget keeps: ``round(fraction * n)`` (at least 2)
    of the n cliques with two or more versions, drawn with ``seed`` from the sorted names, each
    with every version, in their original order. The same seed keeps the same cliques whatever
    the run (scratch, fine-tuning), and a larger fraction keeps a superset of a smaller one."""
    if not 0.0 < fraction <= 1.0:
        raise config.ConfigError(f"data.label_fraction={fraction}: a fraction in (0, 1]")
    usable = sorted(c for c, versions in cliques.items() if len(versions) >= 2)
    count = max(2, round(fraction * len(usable)))
    if count > len(usable):
        raise DatasetError(
            f"{source}: data.label_fraction={fraction} needs {count} training cliques with two "
            f"or more versions, the train split has {len(usable)}"
        )
    order = torch.randperm(len(usable), generator=torch.Generator().manual_seed(seed))
    kept = {usable[i] for i in order[:count].tolist()}
    return {c: versions for c, versions in cliques.items() if c in kept}


class Dataset(torch.utils.data.Dataset):
    def __init__(
        self,
        conf,
        split,
        augment=False,
        fullsongs=False,
        checks=True,
        verbose=False,
        limit_cliques=None,
        bad_audio=None,
        views=None,
        view_offset=2.0,
    ):
        """conf: the config's ``data`` section with ``path.audio`` and ``path.meta`` set (train.py
        copies the top-level ``path`` into it, as the original did). bad_audio: a BadAudioLog to
        go on past unreadable files (None: raise AudioError). views: self-supervised items
        (``VIEWS``; see ``view_item``), with starts at most ``view_offset`` s apart for
        "same-passage"."""
        if split not in SPLITS:
            raise ValueError(f"invalid split {split!r}; valid splits: {', '.join(SPLITS)}")
        if views not in (None,) + VIEWS:
            raise config.ConfigError(f"ssl.views={views!r}: one of {', '.join(VIEWS)}")
        self.views, self.view_offset = views, float(view_offset)
        conf = config.typed(schema.DataConfig, conf, prefix="data.")
        if conf.path is None:
            raise config.ConfigError("data.path: the dataset needs path.audio and path.meta")
        self.conf = conf
        self.split = split
        self.augment = augment
        self.fullsongs = fullsongs
        self.samplerate = conf.samplerate
        self.audiolen = None if fullsongs else conf.audiolen
        self.maxlen = None if fullsongs else conf.maxlen
        self.n_per_class = conf.n_per_class
        self.p_samesong = conf.p_samesong
        self.pad_mode = conf.pad_mode
        meta_path, audio_root = conf.path.meta, conf.path.audio
        self.decoded = None
        if conf.decoded_cache:
            folder = os.path.join(conf.path.cache, f"decoded-{conf.samplerate}hz")
            # excerpts end within max(maxlen, audiolen) s: the rest need not be decoded
            keep = None if self.maxlen is None else max(self.maxlen, self.audiolen)
            self.decoded = DecodedAudioCache(folder, conf.samplerate, seconds=keep)

        self.info, splits = load_metadata(meta_path)
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise DatasetError(f"{meta_path}: no split(s) {missing} in the metadata file")
        cliques = splits[split]
        if limit_cliques is not None:
            cliques = dict(list(cliques.items())[: int(limit_cliques)])
        if split == "train" and conf.label_fraction != 1.0 and not views:  # views read no label
            cliques = label_budget(cliques, conf.label_fraction, conf.label_seed, meta_path)
        if not cliques:
            raise DatasetError(f"{meta_path}: split '{split}' has no cliques")
        self.cliques = {c: [self._full_key(c, v) for v in vs] for c, vs in cliques.items()}
        self.input_kind = self._input_kind(meta_path)
        if self.input_kind == "pcp":
            self.samplerate, self.decoded = F.PCP_RATE, None  # nothing to decode
        self.bad_audio = bad_audio
        self.unreadable = {}  # key -> reason, in this process
        if checks:
            self._check(meta_path)

        order = list(SPLITS)
        offset = sum(len(splits[s]) for s in order[: order.index(split)])
        self.clique_id = {c: offset + i for i, c in enumerate(self.cliques)}
        self.versions = [key for keys in self.cliques.values() for key in keys]
        self.clique_of = {key: c for c, keys in self.cliques.items() for key in keys}
        self.filename = {
            key: os.path.join(audio_root, self.info[key]["filename"]) for key in self.versions
        }
        self.id2key = {self.info[key]["id"]: key for key in self.versions}
        if checks:
            self._check_files(audio_root)
        if verbose:
            print(f"  {split}: --- Found {len(self.cliques):,} cliques, {len(self):,} songs ---")

    def _full_key(self, clique, version):
        """The fork's metadata may list bare version ids; keys are '<clique>:<version>' there."""
        if version in self.info:
            return version
        prefixed = f"{clique}:{version}"
        return prefixed if prefixed in self.info else version

    def _input_kind(self, meta_path):
        """"pcp" when every song of the split is a feature file, "audio" when none is."""
        kinds = {
            "pcp" if self.info.get(k, {}).get("features") else "audio"
            for keys in self.cliques.values()
            for k in keys
        }
        if len(kinds) > 1:
            raise DatasetError(f"{meta_path}: split '{self.split}' mixes audio and feature files")
        return kinds.pop()

    def _check(self, meta_path):
        problems = []
        for clique, keys in self.cliques.items():
            unknown = [k for k in keys if k not in self.info]
            if unknown:
                problems.append(f"clique {clique}: versions without info entry: {unknown[:3]}")
            # full songs are also candidates: a work with one version (a distractor) is kept;
            # self-supervised views read no clique: any track will do
            if len(keys) < (1 if self.fullsongs or self.views else 2):
                problems.append(f"clique {clique}: {len(keys)} version(s), at least 2 are needed")
        if problems:
            shown = "; ".join(problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise DatasetError(f"{meta_path}: invalid split '{self.split}': {shown}{more}")

    def _check_files(self, audio_root):
        """Missing files (or folders in their place): an error if a whole clique (or everything)
        is gone, else reported and replaced by other versions of their cliques (with a
        BadAudioLog) when drawn."""
        missing = {k: _missing_reason(self.filename[k]) for k in self.versions}
        missing = {k: reason for k, reason in missing.items() if reason}
        if not missing:
            return
        keys = list(missing)
        example = self.filename[keys[0]]
        if len(missing) == len(self.versions):
            raise DatasetError(
                f"none of the {len(missing):,} audio files of split '{self.split}' exists "
                f"(e.g. {example}); check path.audio={audio_root}"
            )
        empty = [c for c, ks in self.cliques.items() if all(k in missing for k in ks)]
        if empty or self.bad_audio is None:
            shown = ", ".join(f"{self.filename[k]} ({missing[k]})" for k in keys[:5])
            shown += f" and {len(keys) - 5:,} more" if len(keys) > 5 else ""
            whole = f"; every version of clique {empty[0]} is missing" if empty else ""
            raise DatasetError(
                f"{len(keys):,} audio file(s) of split '{self.split}' missing: {shown}"
                f"{whole}; {RECHECK_HINT}"
            )
        self.unreadable.update(missing)
        self.bad_audio.report_missing(
            self.split,
            [(self.filename[k], reason, self.clique_of[k]) for k, reason in missing.items()],
        )

    def __len__(self):
        return len(self.versions)

    def get_indices(self, cliques=None):
        """Song ids of every version of this split (optionally only of the given cliques)."""
        chosen = self.cliques if cliques is None else {c: self.cliques[c] for c in cliques}
        return [self.info[k]["id"] for keys in chosen.values() for k in keys]

    def _other_versions(self, anchor, clique):
        others = [
            k
            for k in self.cliques[clique]
            if k != anchor or (self.p_samesong > 0 and torch.rand(1).item() < self.p_samesong)
        ]
        if self.augment:
            others = [others[i] for i in torch.randperm(len(others)).tolist()]
        return others

    def _start(self, key, excerpt):
        """Start in seconds of an ``excerpt`` s long: random within the first maxlen seconds when
        augmenting."""
        if not self.augment or excerpt is None:
            return 0.0
        duration = float(self.info[key]["length"])
        if self.maxlen is not None:
            duration = min(duration, self.maxlen)
        return max(0.0, torch.rand(1).item() * (duration - excerpt))

    def read_pcp(self, key, start=0.0, duration=None):
        """Pitch classes (12, frames) float32 numpy of a feature dataset's song, from ``start``
        for ``duration`` seconds (None: to the end); an unreadable file is an ``AudioError``
        (the same reporting and replacement as audio)."""
        song = self.info[key]
        try:
            pcp = F.read_song(self.filename[key], song["features"], song.get("feature_key"))
        except F.FeatureError as err:
            raise AudioError(self.filename[key], err.reason) from None
        first = int(start * F.PCP_RATE)
        last = None if duration is None else first + int(round(duration * F.PCP_RATE))
        return pcp[first:last].T.copy()

    def load_track(self, key, duration=None):
        """The full track (truncated to ``duration`` s): audio (T,) or pitch classes (12, T),
        float32 numpy."""
        if self.input_kind == "pcp":
            return self.read_pcp(key, 0.0, duration)
        return load_audio(self.filename[key], self.samplerate, duration=duration)

    def load(self, key, extra=0.0):
        """Audio (T,) (pitch classes (12, T) of a feature dataset) of one version: the excerpt
        for this item (``extra`` s longer), or the full song."""
        duration = None if self.audiolen is None else self.audiolen + extra
        start = self._start(key, duration)
        if self.input_kind == "pcp":
            x = self.read_pcp(key, start, duration)
        elif self.decoded is None:
            x = load_audio(
                self.filename[key], samplerate=self.samplerate, start=start, duration=duration
            )
        else:
            x = self.decoded.load(self.filename[key], start=start, duration=duration)
        x = torch.from_numpy(x)
        if duration is not None:
            x = force_length(
                x,
                int(round(duration * self.samplerate)),
                pad_mode=self.pad_mode,
                cut_mode="random" if self.augment else "start",
            )
        return x

    def _candidates(self, key, clique):
        """``key``, then the clique's other versions (shuffled when augmenting); drawn only
        after a failure, so that readable data leaves the random streams as they were."""
        yield key
        others = [k for k in self.cliques[clique] if k != key]
        if self.augment:
            others = [others[i] for i in torch.randperm(len(others)).tolist()]
        yield from others

    def load_readable(self, key, clique, extra=0.0):
        """(key, audio) of ``key`` or, when its file cannot be read and a BadAudioLog is set, of
        the first readable other version of ``clique`` (``extra``: as for ``load``)."""
        for candidate in self._candidates(key, clique):
            if candidate in self.unreadable:
                continue
            try:
                return candidate, self.load(candidate, extra)
            except AudioError as err:
                if self.bad_audio is None:
                    raise
                self.unreadable[candidate] = err.reason
                self.bad_audio.report(err.path, err.reason, clique)
        raise DatasetError(
            f"every version of clique {clique} is unreadable (e.g. {self.filename[key]}: "
            f"{self.unreadable[key]}); {RECHECK_HINT}"
        )

    def view_item(self, key):
        """Two views of one track, labelled by nothing but the track: ``[song id, 2 id, view 1,
        2 id + 1, view 2]`` (the song id as a pseudo-clique, each view its own item; an
        unreadable file gives way to a readable one, as in ``__getitem__``). Views are
        ``audiolen`` s long; "same-passage" cuts both from one excerpt ``view_offset`` s longer,
        at independent random starts (a synthetic version once each is augmented on its own),
        "different-time" reads two excerpts at independent random starts in the track."""
        clique = self.clique_of[key]
        length = int(round(self.audiolen * self.samplerate))
        if self.views == "different-time":
            key, first = self.load_readable(key, clique)
            pair = [first, self.load(key)]
        else:
            key, excerpt = self.load_readable(key, clique, extra=self.view_offset)
            room = excerpt.shape[-1] - length
            starts = torch.randint(0, room + 1, (2,)).tolist()
            pair = [excerpt[..., a : a + length] for a in starts]
        song = self.info[key]["id"]
        return [song, 2 * song, pair[0], 2 * song + 1, pair[1]]

    def __getitem__(self, idx):
        anchor = self.versions[idx]
        if self.views:
            return self.view_item(anchor)
        clique = self.clique_of[anchor]
        anchor, audio = self.load_readable(anchor, clique)
        item = [self.clique_id[clique], self.info[anchor]["id"], audio]
        if self.fullsongs:
            return item
        others = self._other_versions(anchor, clique)
        for k in range(self.n_per_class - 1):
            key, audio = self.load_readable(others[k % len(others)], clique)
            item += [self.info[key]["id"], audio]
        return item


def _missing_reason(path):
    if os.path.isfile(path):
        return None
    return "is a directory, not an audio file" if os.path.isdir(path) else "file not found"


class BadAudioLog:
    """Unreadable audio met while training: each file reported once on stderr (also across
    DataLoader workers and resumed runs) and listed in ``path``, a TSV of file, reason, clique."""

    def __init__(self, path):
        self.path = str(path)

    def listed(self):
        try:
            with open(self.path, newline="") as handle:
                return {row[0] for row in csv.reader(handle, delimiter="\t") if row}
        except FileNotFoundError:
            return set()

    def _append(self, rows):
        new = not os.path.isfile(self.path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            if new:
                writer.writerow(["file", "reason", "clique"])
            writer.writerows(rows)

    def report(self, filename, reason, clique):
        if filename in self.listed():
            return
        self._append([(filename, reason, clique)])
        print(
            f"warning: {filename}: {reason}; another version of clique {clique} is used instead "
            f"(listed in {self.path})",
            file=sys.stderr,
            flush=True,
        )

    def report_missing(self, split, files):
        """``files``: [(filename, reason, clique), ...] found missing before training."""
        listed = self.listed()
        rows = [row for row in files if row[0] not in listed]
        if not rows:
            return
        self._append(rows)
        print(
            f"warning: {len(rows):,} audio file(s) of split '{split}' missing (e.g. {rows[0][0]}); "
            f"other versions of their cliques are used instead (listed in {self.path})",
            file=sys.stderr,
            flush=True,
        )
