"""ByteCover3 (Du et al., 2023) as trained by the CLEWS authors: the ByteCover2 CNN on 20 s
shingles with a GeM - BatchNorm - Linear head (``zdim`` 1024). Training compares tracks with
the asymmetric ``maxmean`` similarity of their segments: a classifier with ``nsub`` learnable
sub-centres per clique and a learnable temperature, a triplet loss with a multiplicative margin
and a regulariser pulling positives together. Retrieval: cosine distance, ``smeanmin``.

Shapes: waveforms (B, T); CQT shingles (B, S, 84, T'); embeddings (B, S, zdim).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.parts import losses
from lib.layers import GeMPool
from lib.model_base import ByteCoverModel
from lib.schema import MISSING, ByteCoverConfig, at_least, key

SUBCENTRE_INIT = 0.076  # sub-centres start uniform in (-0.076, 0.076), as the original
# this project's names before it took the original's
LEGACY_HEADS = {"subcentres": "w", "pool": "embpool", "head": "proj"}


def maxmean(x, y):
    """Asymmetric set similarity: x (B, S, D), y (K, L, D) -> (B, K), for each pair the mean over
    x's segments of the best cosine similarity among y's segments."""
    nb, ns, dim = x.shape
    nk, nl, _ = y.shape
    x = F.normalize(x.reshape(nb * ns, dim), dim=-1)
    y = F.normalize(y.reshape(nk * nl, dim), dim=-1)
    sim = (x @ y.T).view(nb, ns, nk, nl)
    return sim.amax(-1).mean(1)


@dataclass
class ByteCover3xConfig(ByteCoverConfig):
    nsub: int = key(MISSING, "sub-centres per clique", at_least(1))


class Model(ByteCoverModel):
    Config = ByteCover3xConfig
    default_redux = "smeanmin"

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        ncha, zdim = self.conf.ncha, self.conf.zdim
        self.embedding_dim = zdim
        nsub = self.conf.nsub
        # the sub-centres of every clique (the original's name ``w``)
        self.w = nn.Parameter(
            torch.empty(self.maxcliques, nsub, zdim).uniform_(-SUBCENTRE_INIT, SUBCENTRE_INIT)
        )
        self.tau = nn.Parameter(torch.ones(1))  # logits scale exp(tau)
        self.embpool = GeMPool()
        self.proj = nn.Sequential(nn.BatchNorm1d(ncha), nn.Linear(ncha, zdim))
        self.positives, self.negatives = losses.mining_from_conf(self.conf)

    def embed(self, h):
        """CQT shingles (B, S, F, T') -> (embeddings (B, S, zdim), None)."""
        nb, ns = h.shape[:2]
        return self.proj(self.embpool(self.features(h))).view(nb, ns, -1), None

    @staticmethod
    def legacy_key(key):
        head, dot, rest = key.partition(".")
        if head in LEGACY_HEADS:
            return LEGACY_HEADS[head] + dot + rest
        return ByteCoverModel.legacy_key(key)

    def loss(self, labels, ids, z, extra=None):
        """Label-smoothed cross-entropy of exp(tau) x maxmean(z, sub-centres) + the similarity
        triplet loss on maxmean(z, z) (margin ``margin``, mining ``model.mining``, batch-hard by
        default) + ``lamb`` x the mean over positive pairs of 1 - similarity."""
        losses.check_class_ids(labels, self.maxcliques)
        logits = self.tau.exp() * maxmean(z, self.w)
        ce = losses.smoothed_cross_entropy(logits, labels, self.conf.smooth)
        sim = maxmean(z, z)
        triplet, _, _, _ = losses.similarity_triplet_loss(
            sim, labels, ids, self.conf.margin, self.positives, self.negatives
        )
        positive, negative = losses.pair_masks(labels, ids)
        s_pos = losses.masked_mean(sim, positive)
        reg = self.conf.lamb * losses.masked_mean(1 - sim, positive)
        total = ce + triplet + reg
        logs = {
            "l_main": total.detach(),
            "l_cent": ce.detach(),
            "l_cont": triplet.detach(),
            "v_dpos": s_pos.detach(),  # similarities, as the original logged them
            "v_dneg": losses.masked_mean(sim, negative).detach(),
        }
        return total, logs
