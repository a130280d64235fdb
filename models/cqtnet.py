"""CQTNet (Yu et al., 2020) as trained by the CLEWS authors: a CQT CNN, a 300-d embedding and a
softmax classifier over the training cliques; cosine retrieval distance, ``min`` reduction.

Shapes: waveforms (B, T); CQT shingles (B, S, 84, T'); embeddings (B, S, zdim).
"""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from lib.layers import cqtnet_legacy_key
from models.parts.losses import check_class_ids
from lib.model_base import CqtNetModel
from lib.schema import MISSING, CqtNetStackConfig, at_least, key


@dataclass
class CqtNetConfig(CqtNetStackConfig):
    width: int = key(32, "channels of the first convolution (the original's 32)", at_least(1))
    maxcliques: int = key(MISSING, "classifier rows: must exceed every clique id", at_least(1))


class Model(CqtNetModel):
    Config = CqtNetConfig

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        self.fc0 = nn.Linear(16 * self.conf.width, self.embedding_dim)
        self.maxcliques = self.conf.maxcliques
        self.fc1 = nn.Linear(self.embedding_dim, self.maxcliques)  # the clique classifier

    def stack_width(self):
        return self.conf.width

    def embed(self, h):
        """CQT shingles (B, S, F, T') -> (embeddings (B, S, zdim), None)."""
        nb, ns = h.shape[:2]
        return self.fc0(self.features(h)).view(nb, ns, -1), None

    def loss(self, labels, ids, z, extra=None):
        """Cross-entropy of the clique classifier on every segment embedding (B, S, D); each
        segment carries its track's label (the original crashed when S > 1)."""
        check_class_ids(labels, self.maxcliques)
        nb, ns, _ = z.shape
        logits = self.fc1(z.reshape(nb * ns, -1))
        loss = F.cross_entropy(logits, labels.repeat_interleave(ns))
        return loss, {"l_main": loss.detach(), "l_cent": loss.detach()}

    @staticmethod
    def legacy_key(key):
        return cqtnet_legacy_key(key, {"classifier": "fc1"})
