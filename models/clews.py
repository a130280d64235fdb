"""CLEWS: segment embeddings trained with segment-distance reductions and a decoupled contrastive
loss (alignment of positives + uniformity of negatives on squared Euclidean distances).

Shapes: waveforms (B, T) at ``sr``; CQT shingles (B, S, F, T'); embeddings (B, S, zdim).
"""

import math
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from lib import tensor_ops
from lib.layers import CQTPrepare, GeMPool, MyIBNResBlock
from lib.model_base import SegmentModel
from lib.schema import MISSING, POSITIVE, REDUCTION, Cqt, ModelConfig, at_least, key

LOSS_FRIENDLY_BASE = 10.0  # b in log1p(beta * mean exp(b - gamma * d)), beta = 1 / (eps * e^b)


@dataclass
class ClewsCqt(Cqt):
    pool: int = key(MISSING, "average pooling width (= stride) over CQT frames", at_least(1))


@dataclass
class Frontend:
    cqtpow: float = key(0.5, "CQT magnitude compression exponent", POSITIVE)
    channels: List[int] = key(
        MISSING, "channels of the two front-end convolutions", at_least(1)
    )


@dataclass
class Backbone:
    blocks: List[int] = key(MISSING, "residual blocks per stage", at_least(1))
    channels: List[int] = key(MISSING, "channels per stage", at_least(1))
    down: List[int] = key(MISSING, "stride of each stage's first block", at_least(1))


@dataclass
class Redux:
    pos: str = key(
        "bpwr-5", "reduction of positive pairs' segment distances (and retrieval's)", REDUCTION
    )
    neg: str = key("min", "reduction of negative pairs' segment distances", REDUCTION)


@dataclass
class Loss:
    redux: Redux = key(Redux, "segment-distance reductions")
    gamma: float = key(5.0, "uniformity temperature", POSITIVE)
    epsilon: float = key(1e-6, "epsilon in the uniformity log", POSITIVE)


@dataclass
class ClewsConfig(ModelConfig):
    cqt: ClewsCqt = key(ClewsCqt, "CQT front end")
    frontend: Frontend = key(Frontend, "convolutional front end")
    backbone: Backbone = key(Backbone, "IBN residual backbone")
    zdim: int = key(MISSING, "embedding width", at_least(1))
    loss: Loss = key(Loss, "the CLEWS loss")


class Model(SegmentModel):
    """Shingles, CQT, ``forward`` and ``distances`` come from ``SegmentModel``: squared Euclidean
    segment distances / D, repeat padding, the loss's positive reduction for retrieval."""
    Config = ClewsConfig
    projection_module = "proj"

    segment_metric = "nsqeuc"
    frame_pad = "repeat"
    min_pad = "repeat"
    cqt_with_pooling = True

    def __init__(self, conf, sr=16000, eps=1e-6):
        super().__init__(conf, sr)
        self.eps = eps

        nc1, nc2 = self.conf.frontend.channels
        self.frontend = nn.Sequential(
            CQTPrepare(pow=self.conf.frontend.cqtpow),
            nn.Conv2d(1, nc1, (12, 3), stride=(1, 2), bias=False),
            nn.BatchNorm2d(nc1),
            nn.ReLU(inplace=True),
            nn.Conv2d(nc1, nc2, (12, 3), stride=2, bias=False),
        )
        bb = self.conf.backbone
        blocks, cin = [], nc2
        for nblocks, cout, down in zip(bb.blocks, bb.channels, bb.down):
            for i in range(nblocks):
                blocks.append(MyIBNResBlock(cin, cout, stride=down if i == 0 else 1))
                cin = cout
        self.backbone = nn.Sequential(*blocks)
        self.pool = GeMPool()
        self.embedding_dim = self.conf.zdim
        # the loss's reductions, parsed once (a wrong name fails here, not at the first batch)
        self.redux_pos = tensor_ops.parse_redux(self.conf.loss.redux.pos)
        self.redux_neg = tensor_ops.parse_redux(self.conf.loss.redux.neg)
        self.proj = nn.Sequential(
            nn.BatchNorm1d(cin), nn.Linear(cin, self.embedding_dim, bias=False)
        )

    @staticmethod
    def legacy_key(key):
        """Before the original names the CQT kernels were ``cqt.*``, not ``cqt.0.*``."""
        if key.startswith("cqt.") and not key.startswith("cqt.0."):
            return "cqt.0." + key[4:]
        return key

    @property
    def default_redux(self):
        """Retrieval reduction: the positive-pair reduction of the loss (bpwr-5)."""
        return self.conf.loss.redux.pos

    def embed(self, h):
        """CQT shingles (B, S, F, T') -> (embeddings (B, S, zdim), None)."""
        nb, ns, nf, nt = h.shape
        h = self.frontend(h.reshape(nb * ns, 1, nf, nt))
        h = self.backbone(h)
        h = self.proj(self.pool(h))
        return h.view(nb, ns, -1), None

    # ---------------------------------------------------------------------------------------------

    def segment_distances(self, z1, z2):
        """Squared Euclidean / D of all segment pairs: (B1,S1,D), (B2,S2,D) -> (B1,B2,S1,S2)."""
        b1, s1, dim = z1.shape
        b2, s2, _ = z2.shape
        dist = tensor_ops.pairwise_distance_matrix(
            z1.reshape(b1 * s1, dim), z2.reshape(b2 * s2, dim), mode="nsqeuc"
        )
        return dist.view(b1, s1, b2, s2).permute(0, 2, 1, 3)

    def loss(self, labels, ids, z, extra=None, numerically_friendly=True):
        """CLEWS loss for embeddings z (B, S, D) of B tracks with clique ``labels`` (B,) and song
        ``ids`` (B,). Returns (loss, dict of detached scalars for logging).

        Positives: same clique, different song; negatives: different clique. Alignment = mean
        over positives of the ``redux.pos`` track distance; uniformity = log(eps + mean over
        negatives of exp(-gamma * ``redux.neg`` distance)). The numerically friendly form computes
        the same value plus the constant log(1 / eps) (same gradients), as the original reports.
        """
        nb = z.size(0)
        if nb < 4:
            raise ValueError(f"the CLEWS loss needs at least 4 tracks per batch, got {nb}")
        if bool((labels == labels[0]).all()):
            # a batch of one clique has no negatives: treat a few tracks as another clique
            labels = labels.clone()
            labels[: max(2, int(0.01 * nb))] = -1
        conf = self.conf.loss
        dist = self.segment_distances(z, z)
        dpos = tensor_ops.distance_tensor_redux(dist, self.redux_pos)
        dneg = tensor_ops.distance_tensor_redux(dist, self.redux_neg)
        same = labels[:, None] == labels[None, :]
        positive = same & (ids[:, None] != ids[None, :])
        negative = ~same

        align = tensor_ops.mmean(dpos, ~positive, eps=1e-6)
        gamma, epsilon = conf.gamma, conf.epsilon
        if numerically_friendly:
            base = LOSS_FRIENDLY_BASE
            beta = 1 / (epsilon * math.exp(base))
            uniform = torch.log1p(
                beta * tensor_ops.mmean(torch.exp(base - gamma * dneg), ~negative)
            )
        else:
            uniform = torch.log(epsilon + tensor_ops.mmean(torch.exp(-gamma * dneg), ~negative))
        total = align + uniform

        with torch.no_grad():
            logdict = {
                "l_main": total.detach(),
                "l_cent": align.detach(),
                "l_cont": uniform.detach(),
                "v_dpos": align.detach(),
                "v_dneg": tensor_ops.mmean(dneg, ~negative, eps=1e-6),
                "v_zmax": z.abs().max(),
                "v_zmean": z.mean(),
                "v_zstd": z.std(),
            }
        return total, logdict
