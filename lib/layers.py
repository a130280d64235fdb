"""Neural-network blocks shared by the models. Attribute names follow the original code so that
its checkpoints load (``gain``/``bias``, ``bn``/``inst``, ``conv``, ``convs``/``skip``/``residual``,
``p``)."""

import math

import torch
from nnAudio.features import CQT1992v2
from torch import nn

CQT_FMIN = 32.70  # Hz, C1


def make_cqt(sr, hoplen, noctaves, nbinsoct=12, fscale=1.0):
    """nnAudio constant-Q transform, magnitude output, (N, T samples) -> (N, bins, frames).

    ``hoplen`` is in seconds (hop in samples = int(hoplen * sr)); kernels are Hann-windowed,
    L1-normalised and centred with reflect padding; frames = floor(T / hop) + 1. The kernels are
    (non-trainable) buffers, as in the original, so its state dicts load unchanged.
    """
    return CQT1992v2(
        sr=sr,
        hop_length=int(hoplen * sr),
        fmin=CQT_FMIN,
        n_bins=int(noctaves * nbinsoct),
        bins_per_octave=int(nbinsoct),
        filter_scale=fscale,
        norm=1,
        window="hann",
        center=True,
        pad_mode="reflect",
        trainable=False,
        output_format="Magnitude",
        verbose=False,
    )


class CompactCqt(nn.Module):
    """``make_cqt``'s transform (magnitude, librosa scaling, reflect-centred) computed without
    its kernels' zeros: nnAudio pads every kernel to one power-of-two width (16,384 samples for
    CLEWS at 16 kHz), while a bin's Hann window spans a few hundred to ~8,200 of them, centred.
    Each octave (``bins`` bins) is convolved over the span its kernels use, from where that span
    starts: the same sums without the zero terms, so the output equals the transform's to
    float rounding (~1e-7), at a seventh of the multiply-adds for CLEWS. Used by ``lib.export``
    (exported models); (N, T samples) -> (N, bins, frames) like the transform it is built from.
    """

    def __init__(self, cqt, bins=12):
        super().__init__()
        self.hop = int(cqt.hop_length)
        self.width = int(cqt.kernel_width)
        real, imag = cqt.cqt_kernels_real[:, 0], cqt.cqt_kernels_imag[:, 0]
        scale = torch.sqrt(cqt.lenghts.reshape(-1).float())
        self.starts = []
        for number, first in enumerate(range(0, real.shape[0], bins)):
            group = slice(first, first + bins)
            used = (real[group].abs() + imag[group].abs()).sum(0).nonzero()
            start, end = int(used.min()), int(used.max()) + 1
            kernels = torch.cat([real[group, start:end], imag[group, start:end]])[:, None]
            # names keep "cqt": lib.export's int8 quantization leaves the CQT's kernels fp32
            self.register_buffer(f"cqt_kernels_{number}", kernels.contiguous())
            self.register_buffer(f"cqt_scale_{number}", scale[group].reshape(-1, 1).clone())
            self.starts.append(start)

    def forward(self, x):
        x = nn.functional.pad(x[:, None], (self.width // 2, self.width // 2), mode="reflect")
        frames = (x.shape[-1] - self.width) // self.hop + 1
        out = []
        for number, start in enumerate(self.starts):
            kernels = getattr(self, f"cqt_kernels_{number}")
            scale = getattr(self, f"cqt_scale_{number}")
            span = x[..., start : start + (frames - 1) * self.hop + kernels.shape[-1]]
            h = nn.functional.conv1d(span, kernels, stride=self.hop)
            real, imag = h.chunk(2, dim=1)
            real, imag = real * scale, imag * scale
            out.append(torch.sqrt(real.pow(2) + imag.pow(2)))
        return torch.cat(out, dim=1)


def compact_cqts(module):
    """``module`` with every ``make_cqt`` transform in it replaced, in place, by its
    ``CompactCqt`` (same output, fewer multiply-adds); returns how many were replaced."""
    found = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, CQT1992v2)
    ]
    for name, child in found:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, CompactCqt(child))
    return len(found)


class CQTPrepare(nn.Module):
    """Compress and normalise a CQT magnitude (N, 1, F, T), then a learnable scalar affine map.

    ``noise`` says when U(0, eps) noise is added before a second normalisation: "train" (default;
    evaluation is deterministic), "always" (the original's behaviour: embeddings varied by ~1e-6
    between identical calls) or "never".
    """

    NORMS = ("max2d", "max1d", "mean2d")
    NOISE = ("train", "always", "never")

    def __init__(self, pow=0.5, norm="max2d", noise="train", affine=True, eps=1e-6):
        super().__init__()
        if norm not in self.NORMS:
            raise ValueError(f"norm must be one of {self.NORMS}, got {norm!r}")
        if noise is True:
            noise = "train"
        elif noise is False:
            noise = "never"
        if noise not in self.NOISE:
            raise ValueError(f"noise must be one of {self.NOISE}, got {noise!r}")
        self.pow, self.norm, self.noise, self.eps = pow, norm, noise, eps
        if affine:
            self.gain = nn.Parameter(torch.ones(1))
            self.bias = nn.Parameter(torch.zeros(1))
        else:
            self.gain = self.bias = None

    def _normalise(self, h):
        h = h - h.amin(dim=(-2, -1), keepdim=True)
        if self.norm == "max2d":
            scale = h.amax(dim=(-2, -1), keepdim=True)
        elif self.norm == "max1d":
            scale = h.amax(dim=-2, keepdim=True)
        else:
            scale = h.mean(dim=(-2, -1), keepdim=True)
        return h / (scale + self.eps)

    def forward(self, h):
        h = self._normalise(h.clamp(min=0).pow(self.pow))
        if self.noise == "always" or (self.noise == "train" and self.training):
            h = h + self.eps * torch.rand_like(h)
        h = self._normalise(h)
        if self.gain is not None:
            h = self.gain * h + self.bias
        return h


class InstanceBatchNorm2d(nn.Module):
    """IBN: BatchNorm on the first half of the channels, affine InstanceNorm on the second."""

    def __init__(self, ncha):
        super().__init__()
        if ncha % 2:
            raise ValueError(f"InstanceBatchNorm2d needs an even channel count, got {ncha}")
        self.half = ncha // 2
        self.bn = nn.BatchNorm2d(self.half)
        self.inst = nn.InstanceNorm2d(self.half, affine=True)

    def forward(self, h):
        a, b = h.split(self.half, dim=1)
        return torch.cat([self.bn(a), self.inst(b.contiguous())], dim=1)


class PadConv2d(nn.Module):
    """Conv2d with 'same'-style padding k // 2 for odd kernels."""

    def __init__(self, cin, cout, k, stride=1, bias=True):
        super().__init__()
        if k % 2 == 0:
            raise ValueError(f"PadConv2d needs an odd kernel size, got {k}")
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)

    def forward(self, h):
        return self.conv(h)


class GeMPool(nn.Module):
    """Generalised-mean pooling over all spatial positions: (N, C, ...) -> (N, C).

    The exponent is p = 1 + softplus(theta), one learnable theta per ``ncha`` (shared by all
    channels when ``ncha`` = 1), initialised so that p = ``init``.
    """

    def __init__(self, ncha=1, init=3.0, eps=1e-6):
        super().__init__()
        theta = math.log(math.expm1(init - 1))
        self.p = nn.Parameter(torch.full((1, ncha, 1), theta))
        self.eps = eps

    def forward(self, h):
        h = h.flatten(2)
        p = 1 + nn.functional.softplus(self.p)
        return h.clamp(min=self.eps).pow(p).mean(-1).pow(1 / p.squeeze(-1))


def _even_width(cin, cout, factor):
    mid = int(max(cin, cout) * factor)
    return mid + (mid % 2)


class MyIBNResBlock(nn.Module):
    """Pre-activation residual block with an IBN first norm and a ReZero-style gain (init 0).

    main: IBN(cin) - ReLU - conv k (stride) - BN - ReLU - conv k;  skip: identity when shapes
    match, else BN - ReLU - conv k (stride). Output = gain * main + skip.
    """

    def __init__(self, cin, cout, factor=0.5, k=3, stride=1, ibn=True):
        super().__init__()
        mid = _even_width(cin, cout, factor)
        self.convs = nn.Sequential(
            InstanceBatchNorm2d(cin) if ibn else nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            PadConv2d(cin, mid, k, stride=stride, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            PadConv2d(mid, cout, k, bias=False),
        )
        if cin == cout and stride == 1:
            self.skip = nn.Identity()
        else:
            self.skip = nn.Sequential(
                nn.BatchNorm2d(cin),
                nn.ReLU(inplace=True),
                PadConv2d(cin, cout, k, stride=stride, bias=False),
            )
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, h):
        return self.gain * self.convs(h) + self.skip(h)


class ResNet50BottBlock(nn.Module):
    """Post-activation bottleneck block (every conv bias-free): 1x1 (cin -> mid) - IBN or BN -
    ReLU - 3x3 (stride) - BN - ReLU - 1x1 (mid -> cout) - BN, plus ``residual`` (identity, or a
    3x3 conv with ``stride`` + BN when the shape changes), then ReLU. mid = max(cin, cout) x
    ``factor``, rounded up to even."""

    def __init__(self, cin, cout, factor=0.25, stride=1, ibn=False):
        super().__init__()
        mid = _even_width(cin, cout, factor)
        self.convs = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            InstanceBatchNorm2d(mid) if ibn else nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        if cin == cout and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, h):
        return torch.relu(self.convs(h) + self.residual(h))


class Unsqueeze(nn.Module):
    """Insert a dimension of size 1 at ``dim`` (the channel of a CQT image)."""

    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim

    def forward(self, h):
        return h.unsqueeze(self.dim)


def bytecover_widths(ncha):
    """Channels of the four ByteCover stages at width ``ncha``: ncha/8, /4, /2 and ncha."""
    if ncha % 16:
        raise ValueError(f"ByteCover width must be a multiple of 16, got {ncha}")
    return [ncha // 8, ncha // 4, ncha // 2, ncha]


def bytecover_frontend(ncha=2048):
    """The ByteCover stem, (N, F, T) -> (N, ncha/8, F', T'): add the channel dimension, a 7x7
    conv (stride 1 over bins, 2 over time) to ncha/8 channels, BN, ReLU, 3x3 max pool (stride 2).
    Indexed as the original (``frontend.1`` conv, ``frontend.2`` BN)."""
    width = bytecover_widths(ncha)[0]
    return nn.Sequential(
        Unsqueeze(1),
        nn.Conv2d(1, width, 7, stride=(1, 2), bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),
    )


def bytecover_resblocks(ncha=2048):
    """The ByteCover ResNet50-IBN stack after the stem: 3 / 4 / 6 / 3 bottleneck blocks of
    ncha/8, /4, /2 and ncha channels (stages 2 and 3 start with stride 2; IBN in the first three
    stages). (N, ncha/8, F, T) -> (N, ncha, F', T')."""
    widths = bytecover_widths(ncha)
    blocks, cin = [], widths[0]
    for stage, (nblocks, cout) in enumerate(zip((3, 4, 6, 3), widths)):
        for i in range(nblocks):
            stride = 2 if i == 0 and stage in (1, 2) else 1
            blocks.append(ResNet50BottBlock(cin, cout, stride=stride, ibn=stage < 3))
            cin = cout
    return nn.Sequential(*blocks)


def cqtnet_blocks(c=32):
    """The five blocks of the CQTNet convolution stack (Yu et al.) at width ``c`` (32 in CQTNet,
    48 in DVINet+), as the original's ``block1`` .. ``block5``: two bias-free convolutions, each
    followed by BatchNorm and ReLU, then max pooling over time (1, 2) in blocks 1-4 and a global
    max pool in block 5. Applied in turn: (N, 1, F, T) -> (N, 16c, 1, 1)."""
    # (cin, cout, kernel, padding, dilation) of each convolution
    convs = [
        (1, c, (12, 3), (6, 0), 1),
        (c, 2 * c, (13, 3), 0, (1, 2)),
        (2 * c, 2 * c, (13, 3), 0, 1),
        (2 * c, 2 * c, (3, 3), 0, (1, 2)),
        (2 * c, 4 * c, 3, 0, 1),
        (4 * c, 4 * c, 3, 0, (1, 2)),
        (4 * c, 8 * c, 3, 0, 1),
        (8 * c, 8 * c, 3, 0, (1, 2)),
        (8 * c, 16 * c, 3, 0, 1),
        (16 * c, 16 * c, 3, 0, (1, 2)),
    ]
    blocks = []
    for first in range(0, len(convs), 2):
        layers = []
        for cin, cout, kernel, padding, dilation in convs[first : first + 2]:
            layers += [
                nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        last = first + 2 == len(convs)
        layers.append(nn.AdaptiveMaxPool2d((1, 1)) if last else nn.MaxPool2d((1, 2)))
        blocks.append(nn.Sequential(*layers))
    return blocks


def cqtnet_legacy_key(key, head_names):
    """A name of this project's earlier CQT CNNs (``body.<i>``, seven modules per block) in the
    original's layout (``block<n>.<j>``); ``head_names`` maps the renamed heads."""
    parts = key.split(".")
    if parts[0] == "body":
        index = int(parts[1])
        return ".".join([f"block{index // 7 + 1}", str(index % 7)] + parts[2:])
    if parts[0] in head_names:
        return ".".join([head_names[parts[0]]] + parts[1:])
    return key


def max_abs_normalise(h, eps=1e-6):
    """Each example (first dim) divided by its largest absolute value."""
    peak = h.abs().flatten(1).amax(1).view(-1, *([1] * (h.ndim - 1)))
    return h / (peak + eps)
