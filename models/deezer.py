"""The backbone of Deezer's multi-view self-supervised benchmark (``../shared/reference/
multiview_ssl.md`` section 2): a frozen, pre-trained music embedding used as a zero-shot
version-identification baseline (tagging embeddings, no version labels).

Front end (``spec``): log-mel of 16 kHz audio, 1024-point STFT (Hann, hop 512, centred with
reflection, divided by the window's L2 norm), power, 128 Slaney mel bands from 0 to 11,025 Hz
(above the 8 kHz Nyquist frequency: the top 11 bands are always empty; kept, as the released
weights carry this filter bank), 10 log10, each example clamped to its maximum - 100 dB.
Backbone (``embedding``): CLIP's modified ResNet (width 16, layers 3/4/6/3, a three-convolution
stem, anti-aliased average-pool down-sampling) with an attention pool whose 13 positions (a 4 x 3
map and the mean) fit 4 s only: 2,800,392 parameters, a 1024-d embedding per 4 s window.

Weights: the released files (``contrastive.pt``, ``byol.pt``, ...) hold the whole SSL model under
``module.backbone.`` (contrastive, Barlow Twins, feature statistics) or ``student.module.backbone.``
(BYOL, clustering) in their ``model`` entry; ``select_weights`` keeps those entries, so
``test.py checkpoint=contrastive.pt conf=config/deezer.yaml`` and ``inference.py`` load them.
State-dict names are the released ones (341 tensors). A track is cut into 4 s windows (the last
completed with zeros), each window divided by its peak and embedded (the reference divides the
whole track by its peak; the evaluation engine embeds a long track a few windows at a time, so the
window is the unit here); the default reduction ``mean`` of cosine distances is 1 - the dot
product of the mean unit embeddings.
"""

import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from lib.model_base import SegmentModel
from lib.schema import ModelConfig

SAMPLERATE = 16000
WINDOW = 4.0  # seconds: the attention pool's 13 positional embeddings fit only this
WIDTH = 16
LAYERS = (3, 4, 6, 3)
HEADS = 8
FEATURE_DIM = 1024
TOP_DB = 100.0
# where each released file keeps the backbone (the first that matches is used)
RELEASED_PREFIXES = ("module.backbone.", "student.module.backbone.")


@dataclass
class DeezerConfig(ModelConfig):
    pass


class LogMel(nn.Module):
    """Waveforms (N, T) at 16 kHz -> log-mel (N, 1, 128, T // 512 + 1) in dB."""

    def __init__(self):
        super().__init__()
        with warnings.catch_warnings():  # the empty top bands are the released front end's
            warnings.filterwarnings("ignore", message=".*mel filterbank has all zero values.*")
            self.spec = torchaudio.transforms.MelSpectrogram(
                sample_rate=SAMPLERATE,
                n_fft=1024,
                hop_length=512,
                f_min=0.0,
                f_max=11025.0,
                n_mels=128,
                power=2.0,
                normalized=True,
                mel_scale="slaney",
                norm=None,
                center=True,
                pad_mode="reflect",
            )

    def forward(self, x):
        db = 10 * torch.log10(self.spec(x).clamp_min(1e-10)).unsqueeze(1)
        floor = db.amax(dim=(1, 2, 3), keepdim=True) - TOP_DB
        return torch.maximum(db, floor)


class Bottleneck(nn.Module):
    """CLIP's bottleneck: 1x1, 3x3, (average pool when strided), 1x1 x4, each with BN; the
    shortcut pools, then a 1x1 convolution and BN, when the shape changes."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool(nn.Module):
    """CLIP's attention pool: the mean token and the ``positions`` map tokens, plus learned
    positional embeddings, one multi-head attention with the mean token as the query, projected
    to ``output_dim``."""

    def __init__(self, positions, embed_dim, heads, output_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(positions + 1, embed_dim) / embed_dim**0.5
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x):
        tokens = x.flatten(2).permute(2, 0, 1)  # (H W, N, C)
        if tokens.shape[0] + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"the attention pool takes a map of {self.positional_embedding.shape[0] - 1} "
                f"positions (4 s at 16 kHz), got {tuple(x.shape[2:])}"
            )
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens])
        tokens = tokens + self.positional_embedding[:, None, :].to(tokens.dtype)
        out, _ = F.multi_head_attention_forward(
            query=tokens[:1],
            key=tokens,
            value=tokens,
            embed_dim_to_check=tokens.shape[-1],
            num_heads=self.heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return out[0]


class ModifiedResNet(nn.Module):
    """Log-mel (N, 1, 128, 126) -> (N, 1024)."""

    def __init__(self, width=WIDTH, layers=LAYERS, heads=HEADS, output_dim=FEATURE_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        channels = width * 32
        self.attnpool = AttentionPool(4 * 3, channels, heads, output_dim)

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self.inplanes, planes, stride)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class Model(SegmentModel):
    Config = DeezerConfig
    front_end = "own"
    fixed_window = WINDOW
    trainable = False
    segment_metric = "cos"
    default_redux = "mean"
    frame_pad = "zeros"
    min_pad = "zeros"

    def __init__(self, conf, sr=SAMPLERATE):
        super().__init__(conf, sr)
        if sr != SAMPLERATE:
            raise ValueError(f"the Deezer backbone takes {SAMPLERATE} Hz audio (data.samplerate)")
        if self.conf.shingling.len != WINDOW:
            raise ValueError(
                f"model.shingling.len={self.conf.shingling.len}: the backbone embeds "
                f"{WINDOW:g} s windows only"
            )
        self.spec = LogMel()
        self.embedding = ModifiedResNet()
        self.embedding_dim = FEATURE_DIM

    def select_weights(self, weights):
        """The backbone's entries of a released file (prefix stripped), or ``weights`` as they
        are when no released prefix is there (a state dict of this model)."""
        for prefix in RELEASED_PREFIXES:
            found = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            if found:
                return found
        return weights

    def prepare(self, h, shingle_len=None, shingle_hop=None):
        """Waveforms (B, T) -> log-mel windows (B, S, 128, 126): 4 s windows every
        ``shingle_hop`` s (None = the config's), each divided by its peak."""
        if shingle_len is not None and shingle_len != WINDOW:
            raise ValueError(
                f"window {shingle_len:g} s: the Deezer backbone embeds {WINDOW:g} s windows only "
                "(qslen=4 cslen=4)"
            )
        return super().prepare(h, shingle_len, shingle_hop)

    def window_features(self, x):
        """4 s windows (N, L) -> log-mel (N, 128, 126), each window divided by its peak."""
        return self.spec(x / x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8))

    def embed(self, h):
        """Log-mel windows (B, S, 128, T') -> (embeddings (B, S, 1024), None)."""
        nb, ns, nf, nt = h.shape
        z = self.embedding(h.reshape(nb * ns, 1, nf, nt))
        return z.view(nb, ns, -1), None

    def loss(self, labels, ids, z, extra=None):
        raise ValueError(
            "the Deezer backbone is a frozen, pre-trained embedding (test.py, inference.py): "
            "train.py does not train it"
        )
