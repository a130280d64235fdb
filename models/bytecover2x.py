"""ByteCover2 (Du et al., 2022) as trained by the CLEWS authors: a ResNet50-IBN CNN on the CQT,
GeM pooling, a ``zdim`` (1536) projection f_t and its BatchNorm f_c. Training: label-smoothed
cross-entropy of a clique classifier on f_c plus a batch-hard triplet loss on Euclidean
distances of f_t; retrieval: cosine distance of f_c, ``min`` reduction.

Shapes: waveforms (B, T); CQT shingles (B, S, 84, T'); embeddings (B, S, zdim).
"""

from torch import nn

from models.parts import losses
from lib.layers import GeMPool
from lib.model_base import ByteCoverModel
from lib.schema import ByteCoverConfig

# this project's names before it took the original's
LEGACY_HEADS = {"pool": "embpool.0", "fc_t": "embpool.1", "bn_c": "bn", "classifier": "fc"}


class Model(ByteCoverModel):
    Config = ByteCoverConfig
    default_redux = "min"

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        ncha, zdim = self.conf.ncha, self.conf.zdim
        self.embedding_dim = zdim
        self.embpool = nn.Sequential(GeMPool(), nn.Linear(ncha, zdim))  # -> f_t
        self.bn = nn.BatchNorm1d(zdim)  # -> f_c
        self.fc = nn.Linear(zdim, self.maxcliques, bias=False)  # the clique classifier
        self.positives, self.negatives = losses.mining_from_conf(self.conf)

    def embed(self, h):
        """CQT shingles (B, S, F, T') -> (f_c (B, S, zdim), f_t (B, S, zdim))."""
        nb, ns = h.shape[:2]
        f_t = self.embpool(self.features(h))
        f_c = self.bn(f_t)
        return f_c.view(nb, ns, -1), f_t.view(nb, ns, -1)

    @staticmethod
    def legacy_key(key):
        head, _, rest = key.partition(".")
        if head in LEGACY_HEADS:
            return f"{LEGACY_HEADS[head]}.{rest}"
        return ByteCoverModel.legacy_key(key)

    def loss(self, labels, ids, z, extra):
        """Label-smoothed cross-entropy on f_c = ``z`` + triplet loss (margin ``margin``, mining
        ``model.mining``, batch-hard by default) on Euclidean distances of f_t = ``extra`` +
        ``lamb`` x the mean distance of the positive pairs. Every segment carries its track's
        label and song id (the original used segment 0 only: with its configs a 150 s shingle is
        the whole excerpt, so S = 1 and both agree)."""
        losses.check_class_ids(labels, self.maxcliques)
        nb, ns, dim = z.shape
        labels, ids = labels.repeat_interleave(ns), ids.repeat_interleave(ns)
        f_c, f_t = z.reshape(nb * ns, dim), extra.reshape(nb * ns, dim)
        ce = losses.smoothed_cross_entropy(self.fc(f_c), labels, self.conf.smooth)
        dist = losses.euclidean(f_t, f_t)
        triplet, _, _, _ = losses.triplet_loss(
            dist, labels, ids, self.conf.margin, self.positives, self.negatives
        )
        positive, negative = losses.pair_masks(labels, ids)
        d_pos = losses.masked_mean(dist, positive)
        total = ce + triplet + self.conf.lamb * d_pos
        logs = {
            "l_main": total.detach(),
            "l_cent": ce.detach(),
            "l_cont": triplet.detach(),
            "v_dpos": d_pos.detach(),
            "v_dneg": losses.masked_mean(dist, negative).detach(),
        }
        return total, logs
