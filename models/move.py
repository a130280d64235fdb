"""MOVE (Yesiler, Serra, Gomez, ICASSP 2020) on pitch-class features, and the smaller variant of
the cover-song tutorial (deeplearning-101-audiomir); ``../shared/reference/move_datacos.md``.

Input: pitch-class sequences (12 bins, about 10.77 frames/s, the CREMA rate after MOVE's
down-sampling). With ``input: audio`` they come from the CQT (``prepare``: octaves folded onto
12 pitch classes, each frame divided by its maximum); with ``input: pcp`` the model takes the
precomputed features of a feature dataset (CREMA-PCP, ``lib.features``) as (B, 12, frames)
"waveforms" at ``lib.features.PCP_RATE``: its ``sr`` is that rate and it has no CQT.

The 12 bins are stacked to 23 ([c0..c11, c0..c10]) so that the first convolution (12 bins high)
sees all 12 circular transpositions and a max over them (``key_pool``) makes the embedding
transposition invariant (``transposition_invariant: false`` is MOVE-NT: 12 bins, no pooling).
Then a time convolution stack, a temporal pooling (``pooling``), a linear map to ``emb_size``
and ``final_activation`` (BatchNorm without affine parameters by default: a standardised space
where unrelated embeddings are about 2 apart in normalised squared distance). Distance:
squared Euclidean / emb_size (``nsqeuc``); loss: triplet with ``margin`` (1.0) and
``model.mining``.

Shapes: waveforms (B, T); pitch-class shingles (B, S, 12, T'); embeddings (B, S, emb_size).
State-dict names are the original MOVE code's (conv1..conv5, prelu1..prelu5, autopool_p, lin1,
lin_bn), so its released state dicts fit a ``variant: move`` model of the same settings.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib import features, tensor_ops
from models.parts import losses
from lib.model_base import SegmentModel
from lib.schema import NON_NEGATIVE, Mining, ModelConfig, PooledCqt, at_least, key, one_of

INPUTS = ("audio", "pcp")
VARIANTS = ("move", "tutorial")
POOLINGS = ("max", "mean", "autopool", "attention", "adaptive_attention")
FINAL_ACTIVATIONS = ("none", "sigmoid", "tanh", "bn")
PITCH_CLASSES = 12
CHANNELS = 256


@dataclass
class MoveConfig(ModelConfig):
    input: str = key(
        "audio",
        "audio (pitch classes from the CQT) or pcp (precomputed features)",
        one_of(*INPUTS),
    )
    cqt: PooledCqt = key(PooledCqt, "CQT front end of audio input (pitch classes: nbinsoct 12)")
    variant: str = key(
        "move",
        "move (ICASSP 2020) or tutorial (the small tutorial model)",
        one_of(*VARIANTS),
    )
    transposition_invariant: bool = key(True, "23-bin stack and key pooling (false: MOVE-NT)")
    emb_size: int = key(
        16000, "embedding width (move: 16000 or 4000 released; tutorial: 32)", at_least(1)
    )
    pooling: str = key(
        "adaptive_attention", f"temporal pooling ({'/'.join(POOLINGS)}; move)", one_of(*POOLINGS)
    )
    final_activation: str = key(
        "bn",
        f"after the linear map ({'/'.join(FINAL_ACTIVATIONS)})",
        one_of(*FINAL_ACTIVATIONS),
    )
    margin: float = key(
        1.0, "triplet margin on squared Euclidean distance / emb_size", NON_NEGATIVE
    )
    mining: Mining = key(Mining, "triplet mining")


def autopool(x, alpha):
    """Softmax-over-time weighted mean of ``x`` (N, C, T) with weights softmax(alpha * x):
    alpha = 0 is the mean, alpha -> inf the max."""
    return (x * torch.softmax(alpha * x, dim=-1)).sum(-1)


def pitch_classes(cqt, bins_per_octave):
    """CQT magnitudes (..., F, T) with ``bins_per_octave`` a multiple of 12 -> (..., 12, T):
    the energy of each pitch class summed over octaves (and over the bins of a semitone), each
    frame divided by its largest class (values in [0, 1], as CREMA-PCP's)."""
    per_semitone = bins_per_octave // PITCH_CLASSES
    *lead, nbins, frames = cqt.shape
    octaves = nbins // bins_per_octave
    x = cqt[..., : octaves * bins_per_octave, :].pow(2)
    x = x.reshape(*lead, octaves, PITCH_CLASSES, per_semitone, frames).sum(dim=(-4, -2))
    return x / x.amax(dim=-2, keepdim=True).clamp_min(1e-10)


class Model(SegmentModel):
    Config = MoveConfig
    segment_metric = "nsqeuc"

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        c = self.conf
        if c.input == "pcp":  # frames of precomputed pitch classes instead of audio samples
            self.sr = features.PCP_RATE
            self.cqt, self.cqtpool = nn.Identity(), nn.Identity()
            self.input_kind = "pcp"
        if c.cqt.nbinsoct % PITCH_CLASSES:
            raise ValueError(f"model.cqt.nbinsoct={c.cqt.nbinsoct}: pitch classes need 12k bins")
        tutorial = c.variant == "tutorial"
        # the tutorial: no dilations, a 256-channel last convolution split in two halves of 128
        dilations = (1, 1, 1, 1) if tutorial else (1, 20, 1, 13)
        attention = not tutorial and c.pooling in ("attention", "adaptive_attention")
        last = 2 * CHANNELS if attention else CHANNELS  # attention: values and weights
        self.conv1 = nn.Conv2d(1, CHANNELS, (PITCH_CLASSES, 180))
        self.key_pool = nn.MaxPool2d((PITCH_CLASSES, 1), stride=(PITCH_CLASSES, 1))
        widths = (CHANNELS, CHANNELS, CHANNELS, last)
        for i, (width, dilation) in enumerate(zip(widths, dilations), start=2):
            conv = nn.Conv2d(CHANNELS, width, (1, 5), dilation=(1, dilation))
            setattr(self, f"conv{i}", conv)
        slope = 0.25 if tutorial else 0.01
        for i in range(1, 6):
            setattr(self, f"prelu{i}", nn.PReLU(init=slope))
        self.autopool_p = nn.Parameter(torch.zeros(1))
        pooled = CHANNELS // 2 if tutorial else CHANNELS
        bn = c.final_activation == "bn"
        self.embedding_dim = c.emb_size
        self.lin1 = nn.Linear(pooled, c.emb_size, bias=tutorial or not bn)
        if bn:
            self.lin_bn = nn.BatchNorm1d(c.emb_size, affine=False)
        self.receptive_field = 1 + 179 + sum(4 * d for d in dilations)  # frames
        if not tutorial:
            for i in range(1, 6):  # MOVE: Kaiming-normal for PReLU(0.01); the tutorial: defaults
                conv = getattr(self, f"conv{i}")
                nn.init.kaiming_normal_(conv.weight, a=0.01, nonlinearity="leaky_relu")
        self.positives, self.negatives = losses.mining_from_conf(self.conf)

    def prepare(self, h, shingle_len=None, shingle_hop=None):
        """Waveforms (B, T), or pitch classes (B, 12, T) with ``input: pcp``, -> pitch-class
        shingles (B, S, 12, T'). Lengths in seconds; None = training."""
        if self.conf.input == "audio":
            return super().prepare(h, shingle_len, shingle_hop)
        if h.ndim != 3 or h.shape[1] != PITCH_CLASSES:
            shape = tuple(h.shape)
            raise ValueError(f"input pcp: expected (B, 12, frames) pitch classes, got {shape}")
        frames = self.shingles(h, shingle_len, shingle_hop)  # (B, 12, S, T')
        return frames.permute(0, 2, 1, 3)  # (B, S, 12, T')

    def window_features(self, x):
        """Audio windows (N, L) -> pitch classes (N, 12, T') of their CQT."""
        return pitch_classes(super().window_features(x), self.conf.cqt.nbinsoct)

    def embed(self, h):
        """Pitch-class shingles (B, S, 12, T') -> (embeddings (B, S, emb_size), None). Shingles
        shorter than the receptive field (320 frames for MOVE, 196 for the tutorial's) are
        completed with zeros, as the convolutions would otherwise leave nothing."""
        nb, ns, nf, nt = h.shape
        if nf != PITCH_CLASSES:
            raise ValueError(f"MOVE takes 12 pitch classes per frame, got {nf} bins")
        x = h.reshape(nb * ns, 1, nf, nt)
        if nt < self.receptive_field:
            x = F.pad(x, (0, self.receptive_field - nt))
        if self.conf.transposition_invariant:
            x = torch.cat([x, x[:, :, : PITCH_CLASSES - 1]], dim=2)  # 23 bins
        x = self.prelu1(self.conv1(x))
        if self.conf.transposition_invariant:
            x = self.key_pool(x)
        for i in range(2, 6):
            x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
        if x.shape[2] != 1:
            raise RuntimeError(f"MOVE: expected one pitch row after the convolutions, {x.shape}")
        z = self.final(self.lin1(self.pool(x[:, :, 0])))
        return z.view(nb, ns, -1), None

    def pool(self, x):
        """Conv-stack output (N, C, T) -> (N, pooled channels)."""
        if self.conf.variant == "tutorial":  # weights from the second half, values the first
            half = x.shape[1] // 2
            weights = torch.softmax(self.autopool_p * x[:, half:], dim=-1)
            return (x[:, :half] * weights).sum(-1)
        how = self.conf.pooling
        if how == "max":
            return x.amax(-1)
        if how == "mean":
            return x.mean(-1)
        if how == "autopool":
            return autopool(x, self.autopool_p)
        if how == "attention":  # values: channels 0-255, weights: softmax of 256-511
            return (x[:, :CHANNELS] * torch.softmax(x[:, CHANNELS:], dim=-1)).sum(-1)
        # adaptive attention (MOVE's default): weights autopooled from 0-255, values 256-511
        weights = torch.softmax(self.autopool_p * x[:, :CHANNELS], dim=-1)
        return (x[:, CHANNELS:] * weights).sum(-1)

    def final(self, z):
        how = self.conf.final_activation
        if how == "bn":
            return self.lin_bn(z)
        if how == "sigmoid":
            return torch.sigmoid(z)
        if how == "tanh":
            return torch.tanh(z)
        return z

    def loss(self, labels, ids, z, extra=None):
        """MOVE's triplet loss: one mined (positive, negative) per anchor on squared Euclidean
        distances / emb_size between tracks (the mean over their segment pairs), mean over the
        anchors of relu(d_p - d_n + margin)."""
        nb, ns, dim = z.shape
        flat = z.reshape(nb * ns, dim)
        dist = tensor_ops.pairwise_distance_matrix(flat, flat, "nsqeuc")
        dist = dist.view(nb, ns, nb, ns).mean(dim=(1, 3))
        loss, d_pos, d_neg, valid = losses.triplet_loss(
            dist, labels, ids, self.conf.margin, self.positives, self.negatives
        )
        logs = {
            "l_main": loss.detach(),
            "v_dpos": losses.masked_mean(d_pos, valid).detach(),
            "v_dneg": losses.masked_mean(d_neg, valid).detach(),
        }
        return loss, logs
