"""The training / validation / test dataset.

One item per version of the split: the version (anchor) followed by ``n_per_class - 1`` other
versions of its clique, each an excerpt of ``audiolen`` seconds. Items are flat lists
``[clique_id, song_id_1, audio_1, song_id_2, audio_2, ...]`` with audio (T,) float32 at
``samplerate``; with ``fullsongs`` only ``[clique_id, song_id, full audio]``.

Numeric clique ids are ``offset + position of the clique in the split``, the offset being 0 for
train, the number of train cliques for valid, and train + valid for test, so ids never collide
across splits.
"""

import os

import torch

from lib.audio import load_audio
from lib.preproc import SPLITS, DatasetError, load_metadata
from lib.tensor_ops import force_length


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
    ):
        """conf: the config's ``data`` section with ``path.audio`` and ``path.meta`` set (train.py
        copies the top-level ``path`` into it, as the original did)."""
        if split not in SPLITS:
            raise ValueError(f"invalid split {split!r}; valid splits: {', '.join(SPLITS)}")
        self.conf = conf
        self.split = split
        self.augment = augment
        self.fullsongs = fullsongs
        self.samplerate = int(conf.samplerate)
        self.audiolen = None if fullsongs else float(conf.audiolen)
        self.maxlen = None if fullsongs or conf.get("maxlen") is None else float(conf.maxlen)
        self.n_per_class = int(conf.n_per_class)
        self.p_samesong = float(conf.get("p_samesong", 0) or 0)
        self.pad_mode = conf.get("pad_mode", "repeat")
        meta_path, audio_root = conf.path.meta, conf.path.audio

        self.info, splits = load_metadata(meta_path)
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise DatasetError(f"{meta_path}: no split(s) {missing} in the metadata file")
        cliques = splits[split]
        if limit_cliques is not None:
            cliques = dict(list(cliques.items())[: int(limit_cliques)])
        if not cliques:
            raise DatasetError(f"{meta_path}: split '{split}' has no cliques")
        self.cliques = {c: [self._full_key(c, v) for v in vs] for c, vs in cliques.items()}
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
        if verbose:
            print(f"  {split}: --- Found {len(self.cliques):,} cliques, {len(self):,} songs ---")

    def _full_key(self, clique, version):
        """The fork's metadata may list bare version ids; keys are '<clique>:<version>' there."""
        if version in self.info:
            return version
        prefixed = f"{clique}:{version}"
        return prefixed if prefixed in self.info else version

    def _check(self, meta_path):
        problems = []
        for clique, keys in self.cliques.items():
            unknown = [k for k in keys if k not in self.info]
            if unknown:
                problems.append(f"clique {clique}: versions without info entry: {unknown[:3]}")
            if len(keys) < 2:
                problems.append(f"clique {clique}: {len(keys)} version(s), at least 2 are needed")
        if problems:
            shown = "; ".join(problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise DatasetError(f"{meta_path}: invalid split '{self.split}': {shown}{more}")

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

    def _start(self, key):
        """Excerpt start in seconds: random within the first maxlen seconds when augmenting."""
        if not self.augment or self.audiolen is None:
            return 0.0
        duration = float(self.info[key]["length"])
        if self.maxlen is not None:
            duration = min(duration, self.maxlen)
        return max(0.0, torch.rand(1).item() * (duration - self.audiolen))

    def load(self, key):
        """Audio (T,) of one version: the excerpt for this item, or the full song."""
        x = load_audio(
            self.filename[key],
            samplerate=self.samplerate,
            start=self._start(key),
            duration=self.audiolen,
        )
        x = torch.from_numpy(x)
        if self.audiolen is not None:
            x = force_length(
                x,
                int(self.audiolen * self.samplerate),
                pad_mode=self.pad_mode,
                cut_mode="random" if self.augment else "start",
            )
        return x

    def __getitem__(self, idx):
        anchor = self.versions[idx]
        clique = self.clique_of[anchor]
        item = [self.clique_id[clique], self.info[anchor]["id"], self.load(anchor)]
        if self.fullsongs:
            return item
        others = self._other_versions(anchor, clique)
        for k in range(self.n_per_class - 1):
            key = others[k % len(others)]
            item += [self.info[key]["id"], self.load(key)]
        return item
