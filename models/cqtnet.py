"""CQTNet (Yu et al., 2020) as trained by the CLEWS authors: a CQT CNN, a 300-d embedding and a
softmax classifier over the training cliques; cosine retrieval distance, ``min`` reduction.

Shapes: waveforms (B, T); CQT shingles (B, S, 84, T'); embeddings (B, S, zdim).
"""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from lib.layers import cqtnet_blocks, cqtnet_legacy_key, max_abs_normalise
from lib.losses import check_class_ids
from lib.model_base import SegmentModel
from lib.schema import MISSING, ModelConfig, PooledCqt, at_least, key



@dataclass
class CqtNetConfig(ModelConfig):
    cqt: PooledCqt = key(PooledCqt, "CQT front end")
    width: int = key(32, "channels of the first convolution (the original's 32)", at_least(1))
    zdim: int = key(MISSING, "embedding width", at_least(1))
    maxcliques: int = key(MISSING, "classifier rows: must exceed every clique id", at_least(1))


class Model(SegmentModel):
    Config = CqtNetConfig
    segment_metric = "cos"
    default_redux = "min"

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        width = self.conf.width
        self.block1, self.block2, self.block3, self.block4, self.block5 = cqtnet_blocks(width)
        self.embedding_dim = self.conf.zdim
        self.fc0 = nn.Linear(16 * width, self.embedding_dim)
        self.maxcliques = self.conf.maxcliques
        self.fc1 = nn.Linear(self.embedding_dim, self.maxcliques)  # the clique classifier

    def embed(self, h):
        """CQT shingles (B, S, F, T') -> (embeddings (B, S, zdim), None)."""
        nb, ns, nf, nt = h.shape
        h = max_abs_normalise(h.reshape(nb * ns, 1, nf, nt))
        for block in (self.block1, self.block2, self.block3, self.block4, self.block5):
            h = block(h)
        return self.fc0(h.flatten(1)).view(nb, ns, -1), None

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
