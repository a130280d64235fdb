"""CoverHunter (Liu et al., 2023) without its coarse-to-fine stage ("-C"), as trained by the CLEWS
authors: BatchNorm over the CQT bins, a Conformer encoder, attentive statistics pooling to f_t
(``ncha`` = 128) and a bottleneck BatchNorm with a frozen bias to f_i. Training: focal loss of a
clique classifier on f_i + 0.01 x centre loss and 0.1 x batch-hard triplet loss on f_t.
Retrieval: cosine distance of f_i, ``min`` reduction.

Training shingles overlap by half: the default hop of ``prepare`` is ``shingling.hop`` / 2.

Shapes: waveforms (B, T); CQT shingles (B, S, 96, T'); embeddings (B, S, ncha).
"""

from dataclasses import dataclass

import torch
from torch import nn

from models.parts import losses
from models.parts.conformer import AttentiveStatisticsPooling, ConformerEncoder
from lib.model_base import SegmentModel
from lib.schema import MISSING, NON_NEGATIVE, Mining, ModelConfig, PooledCqt, at_least, key

CENTER_WEIGHT = 0.01
TRIPLET_WEIGHT = 0.1

# this project's names before it took the original's: (old prefix, new prefix), first match wins
LEGACY_PREFIXES = [
    ("centers", "center_loss.centers"),
    ("input_norm.", "preproc."),
    ("classifier.", "ce_layer."),
    ("encoder.embed.out.", "backbone.embed.out.0."),
    ("encoder.layers.", "backbone.encoders."),
    ("encoder.", "backbone."),
    ("pooling.linear.", "pool_layer._linear.linear_layer."),
    ("pooling.conv.", "pool_layer._conv.conv."),
    ("pooling.final.", "pool_layer._final_layer."),
]
LEGACY_LAYER_PARTS = {
    "attn": "self_attn",
    "ff_macaron.net.0": "feed_forward_macaron.w_1",
    "ff_macaron.net.3": "feed_forward_macaron.w_2",
    "ff.net.0": "feed_forward.w_1",
    "ff.net.3": "feed_forward.w_2",
    "conv.pointwise1": "conv_module.pointwise_conv1",
    "conv.depthwise": "conv_module.depthwise_conv",
    "conv.norm": "conv_module.norm",
    "conv.pointwise2": "conv_module.pointwise_conv2",
}


@dataclass
class CoverHunterConfig(ModelConfig):
    cqt: PooledCqt = key(PooledCqt, "CQT front end")
    ncha: int = key(MISSING, "conformer width (embedding width)", at_least(1))
    ncha_attn: int = key(MISSING, "conformer feed-forward units", at_least(1))
    nblocks: int = key(MISSING, "conformer layers", at_least(1))
    maxcliques: int = key(MISSING, "classifier rows: must exceed every clique id", at_least(1))
    gamma: float = key(MISSING, "focal loss gamma", NON_NEGATIVE)
    margin: float = key(MISSING, "triplet margin", NON_NEGATIVE)
    mining: Mining = key(Mining, "triplet mining")


class CenterLoss(nn.Module):
    """Holds the clique centres (maxcliques, dim), drawn from N(0, 1), as ``centers``."""

    def __init__(self, nclasses, dim):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(nclasses, dim))

    def forward(self, f_t, labels):
        return losses.center_loss(f_t, labels, self.centers)


class Model(SegmentModel):
    Config = CoverHunterConfig
    segment_metric = "cos"
    default_redux = "min"
    frame_pad = "repeat"
    min_pad = "repeat"

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        nbins = self.conf.cqt.noctaves * self.conf.cqt.nbinsoct
        dim = self.conf.ncha
        self.embedding_dim = dim
        self.preproc = nn.BatchNorm1d(nbins)  # over the CQT bins
        self.backbone = ConformerEncoder(
            nbins, dim, self.conf.ncha_attn, self.conf.nblocks
        )
        self.pool_layer = AttentiveStatisticsPooling(dim)
        self.bottleneck = nn.BatchNorm1d(dim)
        self.bottleneck.bias.requires_grad_(False)
        self.maxcliques = self.conf.maxcliques
        self.ce_layer = nn.Linear(dim, self.maxcliques, bias=False)  # the clique classifier
        self.center_loss = CenterLoss(self.maxcliques, dim)
        self.positives, self.negatives = losses.mining_from_conf(self.conf)

    @staticmethod
    def legacy_key(key):
        for old, new in LEGACY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        parts = key.split(".")
        if parts[:2] == ["backbone", "encoders"]:
            rest = ".".join(parts[3:])
            for old, new in LEGACY_LAYER_PARTS.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            key = ".".join(parts[:3] + [rest])
        return key

    def prepare(self, h, shingle_len=None, shingle_hop=None):
        """Waveforms (B, T) -> CQT shingles (B, S, F, T'); the default hop is half the
        configured one (the original's training shingles)."""
        if shingle_hop is None:
            shingle_hop = self.conf.shingling.hop / 2
        return super().prepare(h, shingle_len=shingle_len, shingle_hop=shingle_hop)

    def embed(self, h):
        """CQT shingles (B, S, F, T') -> (f_i (B, S, ncha), f_t (B, S, ncha))."""
        nb, ns, nf, nt = h.shape
        h = self.preproc(h.reshape(nb * ns, nf, nt)).transpose(1, 2)
        f_t = self.pool_layer(self.backbone(h))
        f_i = self.bottleneck(f_t)
        return f_i.view(nb, ns, -1), f_t.view(nb, ns, -1)

    def loss(self, labels, ids, z, extra):
        """Focal loss (``gamma``) of the classifier on f_i = ``z`` + 0.01 x centre loss + 0.1 x
        triplet loss (margin ``margin``, mining ``model.mining``, batch-hard by default) on
        Euclidean distances of f_t = ``extra``; every segment carries its track's label and id."""
        losses.check_class_ids(labels, self.maxcliques)
        nb, ns, dim = z.shape
        labels, ids = labels.repeat_interleave(ns), ids.repeat_interleave(ns)
        f_i, f_t = z.reshape(nb * ns, dim), extra.reshape(nb * ns, dim)
        focal = losses.focal_loss(self.ce_layer(f_i), labels, self.conf.gamma)
        center = self.center_loss(f_t, labels)
        dist = losses.euclidean(f_t, f_t)
        triplet, d_pos, d_neg, valid = losses.triplet_loss(
            dist, labels, ids, self.conf.margin, self.positives, self.negatives
        )
        total = focal + CENTER_WEIGHT * center + TRIPLET_WEIGHT * triplet
        logs = {
            "l_main": total.detach(),
            "l_cent": focal.detach(),
            "l_cont": triplet.detach(),
            "v_dpos": losses.masked_mean(d_pos, valid).detach(),
            "v_dneg": losses.masked_mean(d_neg, valid).detach(),
        }
        return total, logs
