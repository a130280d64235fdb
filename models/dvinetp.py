"""DVINet+ (the CLEWS authors' re-implementation of Discogs-VINet-MIREX): the CQTNet stack at
width ``ncha_in`` (48), an L2-normalised ``zdim`` (512) embedding, a triplet loss with a
spread-out regulariser; cosine retrieval distance, ``min`` reduction.

Shapes: waveforms (B, T); CQT shingles (B, S, 84, T'); embeddings (B, S, zdim).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.parts import losses
from lib.layers import cqtnet_legacy_key
from lib.model_base import CqtNetModel
from lib.schema import MISSING, NON_NEGATIVE, CqtNetStackConfig, Mining, at_least, key


@dataclass
class DviNetConfig(CqtNetStackConfig):
    ncha_in: int = key(48, "channels of the first convolution", at_least(1))
    margin: float = key(MISSING, "triplet margin", NON_NEGATIVE)
    lamb: float = key(MISSING, "weight of the spread-out regulariser", NON_NEGATIVE)
    mining: Mining = key(Mining, "triplet mining")


class Model(CqtNetModel):
    Config = DviNetConfig

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        self.fc = nn.Linear(16 * self.conf.ncha_in, self.embedding_dim)
        self.positives, self.negatives = losses.mining_from_conf(self.conf)

    def stack_width(self):
        return self.conf.ncha_in

    def embed(self, h):
        """CQT shingles (B, S, F, T') -> (unit-norm embeddings (B, S, zdim), None)."""
        nb, ns = h.shape[:2]
        return F.normalize(self.fc(self.features(h)), dim=-1).view(nb, ns, -1), None

    @staticmethod
    def legacy_key(key):
        return cqtnet_legacy_key(key, {"fc0": "fc"})

    def loss(self, labels, ids, z, extra=None):
        """Triplet loss on track distances (Euclidean between segments, mean over segment pairs;
        positives = same clique at another batch position, as the original; mining
        ``model.mining``, hard/hard by default) plus ``lamb`` x the spread-out regulariser (mean
        squared dot similarity of the negative pairs)."""
        nb, ns, dim = z.shape
        flat = z.reshape(nb * ns, dim)
        dist = losses.euclidean(flat, flat).view(nb, ns, nb, ns).mean(dim=(1, 3))
        triplet, d_pos, d_neg, valid = losses.triplet_loss(
            dist, labels, None, self.conf.margin, self.positives, self.negatives
        )
        sim = (flat @ flat.T).view(nb, ns, nb, ns).mean(dim=(1, 3))
        negative = labels[:, None] != labels[None, :]
        reg = (sim.pow(2) * negative).sum() / (negative.sum() + 1e-6)
        total = triplet + self.conf.lamb * reg
        zero = torch.zeros((), device=z.device)
        logs = {
            "l_main": total.detach(),
            "l_cont": triplet.detach(),  # the original's names: l_cont = triplet, l_cent = reg
            "l_cent": reg.detach(),
            "v_dpos": d_pos[valid].mean().detach() if bool(valid.any()) else zero,
            "v_dneg": d_neg[valid].mean().detach() if bool(valid.any()) else zero,
        }
        return total, logs
