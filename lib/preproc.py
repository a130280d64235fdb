"""Building the metadata file of a dataset: parse its split files, check every audio file, keep
the cliques that still have two versions, and report everything that was left out and why.

Metadata file (torch file of plain Python values, readable with ``weights_only=True``)::

    {"info": {key: {"id", "clique", "version", "artist", "title", "filename",
                    "samplerate", "length", "channels"}},
     "split": {"train": {clique: [key, ...]}, "valid": {...}, "test": {...}},
     "about": {how it was made}}

``filename`` is relative to the audio root; ``length`` is in seconds (from the header);
``samplerate`` is the file's native rate. The original's ``[info, splits]`` list is read too.

The feature-only datasets (Da-TACOS, Cover1000) store pitch-class files instead of audio:
their songs have ``features`` (the reader: ``datacos`` or ``cover1000``), ``feature_key`` (the
performance's key inside a shared file, Cover1000), ``frames`` and ``rate`` (frames per
second, ``lib.features.PCP_RATE``) instead of ``samplerate`` and ``channels``; ``filename`` is
relative to the feature root (``--path_audio``). Da-TACOS's single-performance works stay in
its test split: candidates (distractors) that are never queries with an answer.
"""

import csv
import glob
import json
import os
import random
from dataclasses import dataclass, field

from joblib import Parallel, delayed
from tqdm import tqdm

from lib import features as F
from lib.audio import (
    AUDIO_EXTENSIONS,
    SILENCE_PEAK,
    SILENT,
    AudioError,
    get_info,
    is_silent,
    load_audio,
    peak_level,
)
from lib.files import atomic_write
from lib.filters import DOMAINS
from lib.metadata import (  # noqa: F401  (also preproc.* for its users)
    RECHECK_HINT,
    DatasetError,
    load_metadata,
    save_metadata,
)
from lib.schema import SPLITS

CHECK_MODES = ("quick", "full")
QUICK_CHECK_SECONDS = 1.0  # length of each decoded probe in the quick check


@dataclass
class Parsed:
    """What a parser found: songs, splits (in file order) and versions it had to leave out."""

    info: dict = field(default_factory=dict)  # key -> song dict
    splits: dict = field(default_factory=lambda: {s: {} for s in SPLITS})
    rejected: list = field(default_factory=list)  # (split, clique, key, filename, reason)
    keep_single: tuple = ()  # splits where a work with one version stays (as a candidate)

    def add(self, split, clique, key, version, filename, artist=None, title=None, extra=None):
        """``extra``: further metadata kept with the song (e.g. the fork's filter domains)."""
        if key not in self.info:
            self.info[key] = {
                "id": len(self.info),
                "clique": str(clique),
                "version": str(version),
                "artist": artist,
                "title": title,
                "filename": filename,
                **(extra or {}),
            }
        versions = self.splits[split].setdefault(str(clique), [])
        if key not in versions:
            versions.append(key)


def clean_extension(ext):
    """'mp4/', '.mp3', 'm4a' -> 'mp4', 'mp3', 'm4a' (the fork's README writes --ext_in=mp4/)."""
    cleaned = str(ext).strip().strip("/").lstrip(".")
    if not cleaned or "/" in cleaned:
        raise ValueError(f"invalid audio extension {ext!r}")
    return cleaned


###################################################################################################
# Parsers
###################################################################################################


def _read_tsv(path, min_columns):
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found")
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for lineno, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < min_columns:
                raise DatasetError(
                    f"{path}:{lineno}: expected at least {min_columns} tab-separated columns, "
                    f"found {len(row)}"
                )
            rows.append([cell.strip() for cell in row])
    return rows


def parse_shs100k(path_meta, path_audio, ext):
    """SHS100K: ``list`` (clique, version, title, performer, ...) and SHS100K-TRAIN/VAL/TEST."""
    songs = {}
    for clique, version, title, artist, *_ in _read_tsv(os.path.join(path_meta, "list"), 4):
        songs[f"{clique}-{version}"] = (clique, version, title, artist)
    parsed = Parsed()
    # ids follow the order of the `list` file, as in the original
    order = {key: i for i, key in enumerate(songs)}
    for split, name in zip(SPLITS, ("SHS100K-TRAIN", "SHS100K-VAL", "SHS100K-TEST")):
        cliques = {}
        for clique, version, *_ in _read_tsv(os.path.join(path_meta, name), 2):
            cliques.setdefault(clique, set()).add(version)
        for clique, versions in cliques.items():
            for version in sorted(versions):
                key = f"{clique}-{version}"
                filename = f"{key[:2]}/{key}.{ext}"
                if key not in songs:
                    parsed.rejected.append(
                        (
                            split,
                            clique,
                            key,
                            filename,
                            f"no metadata: {key} is not in {name}'s list file",
                        )
                    )
                    continue
                _, _, title, artist = songs[key]
                parsed.add(split, clique, key, version, filename, artist=artist, title=title)
                parsed.info[key]["id"] = order[key]
    return parsed


def _read_json(path, what=""):
    """The parsed JSON file ``path``; a ``DatasetError`` when it is missing or unreadable
    (``what`` says which file was expected)."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found{what}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable JSON file ({err})") from err


def _load_json(path):
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DatasetError(f"{path}: expected an object mapping clique ids to lists of versions")
    return data


def _folder_variants(prefix):
    """Spellings of the two-character audio sub-folder the original tried, in its order."""
    a, b = prefix[:1], prefix[1:2]
    variants = [
        prefix,
        prefix.upper(),
        a.upper() + b.lower(),
        a.lower() + b.upper(),
        prefix.lower(),
    ]
    return list(dict.fromkeys(variants))


def _youtube_paths(youtube_id, ext):
    """The YouTube layout's paths of one id: ``<yt[:2]>/<yt>.<ext>``, the folder in each case
    spelling the original tried (the plain one first)."""
    return [f"{folder}/{youtube_id}.{ext}" for folder in _folder_variants(youtube_id[:2])]


def _first_existing(path_audio, candidates):
    """The first of ``candidates`` (paths relative to ``path_audio``) that exists, else the
    first (reported as missing by the check)."""
    found = (c for c in candidates if os.path.exists(os.path.join(path_audio, c)))
    return next(found, candidates[0])


def _read_sidecar(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _parse_discogs_json(files, path_audio, ext):
    """Discogs-VI / DVI2 JSON splits: {clique: [{"version_id", "youtube_id", "track_title"}]}.

    The cross-domain fields of richer releases (release styles/genres, YouTube tags, the dvi
    flag) are kept in the song's info when present, for test.py's filters."""
    parsed = Parsed()
    for split, path in files.items():
        for clique, versions in _load_json(path).items():
            for item in versions:
                youtube_id = item.get("youtube_id") if isinstance(item, dict) else None
                version_id = item.get("version_id", youtube_id) if isinstance(item, dict) else None
                if not youtube_id or not version_id:
                    key = f"{clique}:{version_id or '?'}"
                    parsed.rejected.append(
                        (
                            split,
                            clique,
                            key,
                            "",
                            f"no metadata: entry without youtube_id/version_id in {path}",
                        )
                    )
                    continue
                youtube_id = str(youtube_id)
                filename = _first_existing(path_audio, _youtube_paths(youtube_id, ext))
                sidecar = _read_sidecar(
                    os.path.join(path_audio, os.path.dirname(filename), youtube_id + ".meta")
                )
                title = sidecar.get("title") or item.get("track_title")
                parsed.add(
                    split,
                    clique,
                    f"{clique}:{version_id}",
                    version_id,
                    filename,
                    artist=sidecar.get("artist"),
                    title=title,
                    extra={d: item[d] for d in DOMAINS if d in item},
                )
    return parsed


DISCOGS_VI_STEMS = ("DiscogsVI-YT-20240701-light.json", "Discogs-VI-YT-20240701-light.json")


def parse_discogs_vi(path_meta, path_audio, ext):
    """Discogs-VI-YT light release: <stem>.train / .val / .test (either spelling of the stem)."""
    files = {}
    for split, suffix in zip(SPLITS, ("train", "val", "test")):
        names = [os.path.join(path_meta, f"{stem}.{suffix}") for stem in DISCOGS_VI_STEMS]
        found = [n for n in names if os.path.isfile(n)]
        found += sorted(glob.glob(os.path.join(path_meta, f"*light.json.{suffix}")))
        if not found:
            raise DatasetError(f"{names[0]}: file not found (nor {os.path.basename(names[1])})")
        files[split] = found[0]
    return _parse_discogs_json(files, path_audio, ext)


def parse_dvi2(path_meta, path_audio, ext):
    """DVI2 / DVI2-FM / dvi2fm_light: train.json, valid.json (or val.json), test.json."""
    files = {}
    for split in SPLITS:
        path = os.path.join(path_meta, f"{split}.json")
        if split == "valid" and not os.path.isfile(path):
            path = (
                os.path.join(path_meta, "val.json")
                if os.path.isfile(os.path.join(path_meta, "val.json"))
                else path
            )
        files[split] = path
    return _parse_discogs_json(files, path_audio, ext)


# DiVers (the published DVI2): fields that share a name with this project's own song fields are
# kept under another name; every other field keeps its name (null values are left out)
DIVERS_RENAMED = {"id": "divers_id", "filename": "divers_filename"}
DIVERS_SPLITS = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}


def _divers_audio_candidates(item, version, ext):
    """Audio paths relative to the root to try for one DiVers version, in order: the release's
    ``filename`` (as given, then with ``ext``, then its last two components: the authors' root
    differs from the user's), then the YouTube layout ``<yt[:2]>/<yt>.<ext>`` (the folder in
    any case spelling) and a flat ``<yt>.<ext>``."""
    out = []
    filename = item.get("filename")
    if isinstance(filename, str) and filename.strip():
        parts = filename.replace("\\", "/").strip("/").split("/")
        relative = [] if os.path.isabs(filename) else ["/".join(parts)]
        for rel in relative + ["/".join(parts[-2:])]:
            out += [rel, f"{os.path.splitext(rel)[0]}.{ext}"]
    youtube_id = item.get("youtube_id") or (None if version.startswith("V-") else version)
    if youtube_id:
        out += _youtube_paths(str(youtube_id), ext) + [f"{youtube_id}.{ext}"]
    return list(dict.fromkeys(out))


def _divers_fields(item, where):
    """A version's release fields as this project keeps them: nulls left out, the fields named
    in ``DIVERS_RENAMED`` renamed, ``artist``/``title`` apart; an empty field name raises
    ``DatasetError`` naming ``where``."""
    fields = {}
    for name, value in item.items():
        if value is None or name in ("artist", "title"):
            continue
        if not name:  # JSON names are text, but may be empty
            raise DatasetError(f"{where}: a field without a name")
        fields[DIVERS_RENAMED.get(name, name)] = value
    return fields


def _divers_text(value):
    return None if value is None else str(value)


def parse_divers(path_meta, path_audio, ext):
    """DiVers (``progsi/divers_dataset``, the published DVI2): one nested JSON file of a subset
    and size (``large/divers.json``, ``small/yvi_small_light.json``, ...) laid out as
    ``{split: {clique_id: {version_id: {field: value}}}}``. Light and full files alike; every
    field is kept with the song (``DIVERS_RENAMED`` for the names this project uses itself)."""
    data = _read_json(path_meta, " (DiVers: give one of the release's JSON files)")
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path_meta}: expected an object {{split: {{clique: {{version: fields}}}}}}"
        )
    unknown = [k for k in data if k not in DIVERS_SPLITS]
    if unknown or not data:
        raise DatasetError(
            f"{path_meta}: expected the splits train / valid / test at the top, found "
            f"{', '.join(map(repr, unknown or ['nothing']))}"
        )
    parsed = Parsed()
    for name, cliques in data.items():
        split = DIVERS_SPLITS[name]
        if not isinstance(cliques, dict):
            raise DatasetError(f"{path_meta}: split {name!r} is not an object of cliques")
        for clique, versions in cliques.items():
            if not isinstance(versions, dict):
                raise DatasetError(
                    f"{path_meta}: {name}/{clique} is not an object of versions "
                    f"(found {type(versions).__name__})"
                )
            for version, item in versions.items():
                where = f"{path_meta}: {name}/{clique}/{version}"
                if not isinstance(item, dict):
                    raise DatasetError(f"{where}: expected an object of fields")
                key = f"{clique}:{version}"
                candidates = _divers_audio_candidates(item, str(version), ext)
                if not candidates:
                    parsed.rejected.append(
                        (split, clique, key, "", "no audio: neither filename nor youtube_id")
                    )
                    continue
                parsed.add(
                    split,
                    clique,
                    key,
                    version,
                    _first_existing(path_audio, candidates),
                    artist=_divers_text(item.get("artist")),
                    title=_divers_text(item.get("title")),
                    extra=_divers_fields(item, where),
                )
    return parsed


def parse_covers80(path_meta, path_audio, ext):
    """covers80: list1.list and list2.list, lines '<work>/<version>'; all cliques in every split."""
    parsed = Parsed()
    for name in ("list1.list", "list2.list"):
        path = os.path.join(path_meta, name)
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: file not found")
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                line = line.strip()
                if not line:
                    continue
                clique, sep, version = line.partition("/")
                if not sep or not version:
                    raise DatasetError(
                        f"{path}:{lineno}: expected '<work>/<version>', found {line!r}"
                    )
                artist = version.split("+", 1)[0]
                title = version.rsplit("-", 1)[-1]
                for split in SPLITS:
                    parsed.add(
                        split, clique, line, version, f"{line}.{ext}", artist=artist, title=title
                    )
    return parsed


def folder_extensions(text):
    """'any' -> every supported audio extension; 'mp3,m4a' -> ('mp3', 'm4a')."""
    if text.strip().lower() == "any":
        return tuple(e.lstrip(".") for e in AUDIO_EXTENSIONS)
    return tuple(clean_extension(e) for e in text.split(","))


def _assign_splits(works, fractions, seed):
    """{work: split} drawing the ``works`` (in a fixed order) at random with ``seed`` into
    train/valid/test by ``fractions``."""
    shuffled = list(works)
    random.Random(seed).shuffle(shuffled)
    total = sum(fractions)
    bounds, acc = [], 0.0
    for frac in fractions:
        acc += frac / total
        bounds.append(round(acc * len(shuffled)))
    assigned, start = {}, 0
    for split, end in zip(SPLITS, bounds):
        for work in shuffled[start:end]:
            assigned[work] = split
        start = end
    return assigned


def parse_folder(path_audio, ext, fractions=(0.8, 0.1, 0.1), seed=43):
    """One folder per work: <root>/<work>/<version>.<ext>. ``ext`` is one extension or a tuple
    of them. Works are split at random (seeded) with ``fractions`` for train/valid/test;
    (0, 0, 1) puts everything in test. Keys are '<work>/<file name>'."""
    extensions = (ext,) if isinstance(ext, str) else tuple(ext)
    if not os.path.isdir(path_audio):
        raise DatasetError(f"{path_audio}: audio folder not found")
    works = sorted(d for d in os.listdir(path_audio) if os.path.isdir(os.path.join(path_audio, d)))
    if not works:
        raise DatasetError(
            f"{path_audio}: no work folders (expected <root>/<work>/<version>.{extensions[0]})"
        )
    assigned = _assign_splits(works, fractions, seed)
    parsed = Parsed()
    for work in works:
        names = sorted(os.listdir(os.path.join(path_audio, work)))
        for name in names:
            stem, dot, found = name.rpartition(".")
            if dot and found.lower() in extensions:
                key = f"{work}/{name}"
                parsed.add(assigned[work], work, key, stem, key, title=stem)
    return parsed


DATACOS_METADATA = (
    "da-tacos_benchmark_subset_metadata.json",
    "da-tacos_metadata/da-tacos_benchmark_subset_metadata.json",
)


def _datacos_file(path_features, work, perf):
    """The h5 file of a performance, in the per-feature layout (``W_<w>_crema/P_<p>_crema.h5``)
    or the single-files one (``W_<w>/P_<p>.h5``); the first when neither exists."""
    per_feature = os.path.join(f"{work}_crema", f"{perf}_crema.h5")
    single = os.path.join(work, f"{perf}.h5")
    if os.path.isfile(os.path.join(path_features, single)):
        return single
    return per_feature


def parse_datacos(path_meta, path_audio, ext=None):
    """Da-TACOS benchmark subset: the metadata JSON (work id -> performance id -> record) in
    ``path_meta`` (or the file itself), the crema h5 files under ``path_audio``. Everything is in
    the test split (the benchmark is for testing only), single-performance works included."""
    path = path_meta
    if os.path.isdir(path_meta):
        found = [os.path.join(path_meta, name) for name in DATACOS_METADATA]
        path = next((p for p in found if os.path.isfile(p)), found[0])
    works = _read_json(path, " (the Da-TACOS benchmark metadata JSON)")
    if not isinstance(works, dict) or not all(isinstance(v, dict) for v in works.values()):
        raise DatasetError(f"{path}: expected work id -> performance id -> record")
    parsed = Parsed()
    for work in sorted(works):
        for perf in sorted(works[work]):
            record = works[work][perf] if isinstance(works[work][perf], dict) else {}
            filename = _datacos_file(path_audio, work, perf)
            parsed.add(
                "test",
                work,
                f"{work}/{perf}",
                perf,
                filename,
                artist=record.get("perf_artist"),
                title=record.get("perf_title"),
                extra={"features": "datacos"},
            )
    parsed.keep_single = ("test",)
    return parsed


COVER1000_FILES = ("cover1000.pyjama", "cover1000_feat.hdf5")


def _entry_value(entry, field, where=None):
    """The first value of a pyjama entry's ``field``; a ``DatasetError`` naming ``where`` when
    it is absent, or None when ``where`` is None (an optional field)."""
    values = entry.get(field)
    if not isinstance(values, list) or not values or not isinstance(values[0], dict):
        if where is None:
            return None
        raise DatasetError(f"{where}: no {field!r} value")
    return values[0].get("value")


def parse_cover1000(path_meta, path_audio, fractions=(0.8, 0.1, 0.1), seed=43):
    """Cover1000 as the tutorial packages it: ``cover1000.pyjama`` (JSON annotations) in
    ``path_meta``, ``cover1000_feat.hdf5`` (one array per performance) in ``path_audio``. Works
    are split at random (seeded, sorted ids first: the tutorial's split depended on the hash
    seed) with ``fractions`` for train/valid/test."""
    pyjama = os.path.join(path_meta, COVER1000_FILES[0])
    try:
        entries = _read_json(pyjama)["collection"]["entry"]
    except (KeyError, TypeError) as err:
        raise DatasetError(f"{pyjama}: not the tutorial's pyjama annotations ({err})") from None
    songs = []
    for i, entry in enumerate(entries):
        where = f"{pyjama}: entry {i}"
        key = str(_entry_value(entry, "filepath", where))
        work = str(_entry_value(entry, "work-id", where))
        title, artist = _entry_value(entry, "title"), _entry_value(entry, "performer")
        songs.append((work, key, artist, title))
    works = sorted({work for work, _, _, _ in songs}, key=lambda w: (len(w), w))
    assigned = _assign_splits(works, fractions, seed)
    parsed = Parsed()
    for work, key, artist, title in songs:
        extra = {"features": "cover1000", "feature_key": key}
        parsed.add(
            assigned[work], work, key, key, COVER1000_FILES[1], artist, title, extra=extra
        )
    return parsed


DATASETS = {
    "SHS100K": parse_shs100k,
    "DiscogsVI": parse_discogs_vi,
    "DVI": parse_dvi2,
    "DiscogsVI2": parse_dvi2,
    "DVI2": parse_dvi2,
    "DiVers": parse_divers,
    "covers80": parse_covers80,
    "DaTACOS": parse_datacos,
}


###################################################################################################
# Checking audio
###################################################################################################


def check_audio(path, mode="quick", min_duration=1.0):
    """Header info of a file after making sure it decodes and is not silent.

    quick: read the header, decode short probes at the start, the middle and just before the
    declared end (a truncated download fails there), and everything only if all three are
    silent; full: decode everything. Returns ({"samplerate", "length", "channels"}, None) or
    (None, reason).
    """
    if not os.path.exists(path):
        return None, "missing file"
    try:
        info = get_info(path)
        if info.duration < min_duration:
            return None, f"too short: {info.duration:.2f} s < {min_duration:.2f} s"
        silent = True
        if mode != "full":
            probe = min(QUICK_CHECK_SECONDS, info.duration)
            starts = (0.0, max(0.0, info.duration / 2 - probe), max(0.0, info.duration - 2 * probe))
            excerpts = [load_audio(path, samplerate=None, start=s, duration=probe) for s in starts]
            silent = all(is_silent(x) for x in excerpts)
        if silent:  # decode everything, block by block
            silent = peak_level(path) < SILENCE_PEAK
    except AudioError as err:
        return None, f"undecodable: {err.reason}"
    if silent:
        return None, SILENT
    return {"samplerate": info.samplerate, "length": info.duration, "channels": info.channels}, None


def check_features(path, reader, key=None, min_duration=1.0):
    """Like ``check_audio`` for a pitch-class feature file (``reader``: datacos or cover1000):
    ({"frames", "rate", "length"}, None) or (None, reason)."""
    if not os.path.exists(path):
        return None, "missing file"
    try:
        pcp = F.read_song(path, reader, key)
    except F.FeatureError as err:
        return None, f"unreadable: {err}"
    length = len(pcp) / F.PCP_RATE
    if length < min_duration:
        return None, f"too short: {length:.2f} s < {min_duration:.2f} s"
    return {"frames": len(pcp), "rate": F.PCP_RATE, "length": length}, None


def _check_one(key, path, mode, min_duration, song):
    if song.get("features"):
        result, reason = check_features(
            path, song["features"], song.get("feature_key"), min_duration
        )
    else:
        result, reason = check_audio(path, mode, min_duration)
    return key, result, reason


def check_all(parsed, path_audio, mode="quick", njobs=-1, min_duration=1.0, progress=True):
    """Check every version referenced by a split. Returns {key: header dict} and {key: reason}."""
    if mode not in CHECK_MODES:
        raise ValueError(f"check mode must be one of {CHECK_MODES}, got {mode!r}")
    keys = sorted({k for cliques in parsed.splits.values() for ks in cliques.values() for k in ks})
    jobs = (
        delayed(_check_one)(
            k,
            os.path.join(path_audio, parsed.info[k]["filename"]),
            mode,
            min_duration,
            parsed.info[k],
        )
        for k in keys
    )
    runner = Parallel(n_jobs=njobs, return_as="generator_unordered", batch_size=8)
    good, bad = {}, {}
    for key, result, reason in tqdm(
        runner(jobs), total=len(keys), desc="Check files", disable=not progress, ncols=80
    ):
        if result is None:
            bad[key] = reason
        else:
            good[key] = result
    return good, bad


def filter_splits(parsed, good, bad, keep_single=()):
    """Keep checked versions, drop cliques left with fewer than two (but in the splits named in
    ``keep_single``, where one version stays as a candidate) -> (info, splits, rejected)."""
    rejected = list(parsed.rejected)
    splits = {}
    for split, cliques in parsed.splits.items():
        splits[split] = {}
        for clique, keys in cliques.items():
            for key in keys:
                if key in bad:
                    rejected.append((split, clique, key, parsed.info[key]["filename"], bad[key]))
            kept = [k for k in keys if k in good]
            if len(kept) >= 2 or (kept and split in keep_single):
                splits[split][clique] = kept
            else:
                for key in kept:
                    rejected.append(
                        (
                            split,
                            clique,
                            key,
                            parsed.info[key]["filename"],
                            f"clique {clique} left with {len(kept)} version(s) in {split}",
                        )
                    )
    used = {k for cliques in splits.values() for keys in cliques.values() for k in keys}
    info = {k: {**parsed.info[k], **good[k]} for k in parsed.info if k in used}
    return info, splits, rejected


def split_counts(splits):
    return {s: sum(len(v) for v in splits.get(s, {}).values()) for s in SPLITS}


def write_report(path, rejected):
    """Tab-separated report of every version left out, with its reason."""

    def write(handle):
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["split", "clique", "key", "filename", "reason"])
        writer.writerows(rejected)

    atomic_write(path, write, text=True)


def report_path(fn_out):
    stem = fn_out[:-3] if fn_out.endswith(".pt") else fn_out
    return stem + ".rejected.tsv"
