"""The Conformer encoder of CoverHunter (WeNet/ESPnet style, written from its description) and
attentive statistics pooling.

Sequences are (N, T, C): N examples, T frames, C channels. No padding masks: every sequence of a
batch has the same length (fixed-length shingles). Module names are those of the original code
(WeNet's ``self_attn``, ``feed_forward.w_1``, ``conv_module.pointwise_conv1``, ...), so that its
state dicts load unchanged.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_POSITIONS = 5000


class Conv2dSubsampling4(nn.Module):
    """Two 3x3 stride-2 convolutions (+ReLU) over (time, feature) and a linear projection:
    (N, T, F) -> (N, T', dim) with T' = ((T - 1) // 2 - 1) // 2."""

    def __init__(self, nfeat, dim):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, dim, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, stride=2),
            nn.ReLU(),
        )
        self.out = nn.Sequential(nn.Linear(dim * (((nfeat - 1) // 2 - 1) // 2), dim))

    def forward(self, x):
        h = self.conv(x.unsqueeze(1))  # (N, dim, T', F')
        n, c, t, f = h.shape
        return self.out(h.transpose(1, 2).reshape(n, t, c * f))


class RelPositionalEncoding(nn.Module):
    """x * sqrt(dim) and the sinusoidal table of positions 0..T-1 (1, T, dim), both with
    dropout; the attention layers turn the table into relative position terms."""

    def __init__(self, dim, dropout=0.1, max_len=MAX_POSITIONS):
        super().__init__()
        self.scale = math.sqrt(dim)
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq)
        self.register_buffer("table", table[None], persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if x.size(1) > self.table.size(1):
            raise ValueError(
                f"sequence of {x.size(1)} frames is longer than the {self.table.size(1)} "
                "positions of the encoder"
            )
        pos = self.table[:, : x.size(1)].to(x.dtype)
        return self.dropout(x * self.scale), self.dropout(pos)


class RelPositionMultiHeadedAttention(nn.Module):
    """Self-attention with relative position terms (Transformer-XL style, no relative shift):
    scores = ((q + u) k^T + (q + v) p^T) / sqrt(d_k), p = Linear(pos_emb), learnable u, v."""

    def __init__(self, nheads, dim, dropout=0.0):
        super().__init__()
        if dim % nheads:
            raise ValueError(f"attention width {dim} is not a multiple of {nheads} heads")
        self.nheads, self.dk = nheads, dim // nheads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(nheads, self.dk))
        self.pos_bias_v = nn.Parameter(torch.empty(nheads, self.dk))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x):
        """(N, T, dim) -> (N, T, heads, d_k)."""
        return x.view(x.size(0), x.size(1), self.nheads, self.dk)

    def forward(self, x, pos_emb):
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x)).transpose(1, 2)
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)
        content = (q + self.pos_bias_u).transpose(1, 2) @ k.transpose(-2, -1)
        position = (q + self.pos_bias_v).transpose(1, 2) @ p.transpose(-2, -1)
        attn = ((content + position) / math.sqrt(self.dk)).softmax(-1)
        h = self.dropout(attn) @ v  # (N, heads, T, d_k)
        return self.linear_out(h.transpose(1, 2).reshape(x.shape))


class FeedForward(nn.Module):
    """w_1 (dim -> hidden), SiLU, dropout, w_2 (hidden -> dim)."""

    def __init__(self, dim, hidden, dropout=0.1):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.w_2(self.dropout(F.silu(self.w_1(x))))


class ConvolutionModule(nn.Module):
    """Pointwise conv to 2 x dim + GLU, depthwise conv (``kernel``, same padding), BatchNorm,
    SiLU, pointwise conv. (N, T, dim) -> (N, T, dim)."""

    def __init__(self, dim, kernel=15):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"convolution kernel must be odd, got {kernel}")
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.BatchNorm1d(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x):
        h = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        h = F.silu(self.norm(self.depthwise_conv(h)))
        return self.pointwise_conv2(h).transpose(1, 2)


class ConformerLayer(nn.Module):
    """Pre-norm macaron layer: x += FFN/2; x += MHSA; x += Conv; x += FFN/2; LayerNorm."""

    def __init__(self, dim, hidden, nheads=4, kernel=15, dropout=0.1):
        super().__init__()
        # registered in the original's order (it fixes the order of the state dict)
        self.self_attn = RelPositionMultiHeadedAttention(nheads, dim)
        self.feed_forward = FeedForward(dim, hidden, dropout)
        self.feed_forward_macaron = FeedForward(dim, hidden, dropout)
        self.conv_module = ConvolutionModule(dim, kernel)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-5)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-5)
        self.norm_ff_macaron = nn.LayerNorm(dim, eps=1e-5)
        self.norm_conv = nn.LayerNorm(dim, eps=1e-5)
        self.norm_final = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pos_emb):
        x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos_emb))
        x = x + self.dropout(self.conv_module(self.norm_conv(x)))
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """(N, T, nfeat) -> (N, T', dim): 4x subsampling, relative positions, ``nblocks`` layers,
    a final LayerNorm."""

    def __init__(self, nfeat, dim=128, hidden=256, nblocks=6, nheads=4, kernel=15, dropout=0.1):
        super().__init__()
        self.embed = Conv2dSubsampling4(nfeat, dim)
        self.pos_enc = RelPositionalEncoding(dim, dropout)
        self.after_norm = nn.LayerNorm(dim, eps=1e-5)
        self.encoders = nn.ModuleList(
            ConformerLayer(dim, hidden, nheads, kernel, dropout) for _ in range(nblocks)
        )

    def forward(self, x):
        x, pos_emb = self.pos_enc(self.embed(x))
        for layer in self.encoders:
            x = layer(x, pos_emb)
        return self.after_norm(x)


class LinearLayer(nn.Module):
    """A ``nn.Linear`` held as ``linear_layer`` (the original pooling's parameter names)."""

    def __init__(self, cin, cout, bias=True):
        super().__init__()
        self.linear_layer = nn.Linear(cin, cout, bias=bias)

    def forward(self, x):
        return self.linear_layer(x)


class Conv1dLayer(nn.Module):
    """A ``nn.Conv1d`` held as ``conv`` (the original pooling's parameter names)."""

    def __init__(self, cin, cout, kernel):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel)

    def forward(self, x):
        return self.conv(x)


class AttentiveStatisticsPooling(nn.Module):
    """(N, T, C) -> (N, out): per-channel attention over time computed from each frame and the
    sequence's mean and std, attention-weighted mean and std, a bias-free projection."""

    def __init__(self, channels, out=None, eps=1e-12):
        super().__init__()
        self.eps = eps
        self._linear = LinearLayer(3 * channels, channels)
        self._conv = Conv1dLayer(channels, channels, 1)
        self._final_layer = nn.Linear(2 * channels, out or channels, bias=False)
        nn.init.xavier_uniform_(self._linear.linear_layer.weight)
        nn.init.xavier_uniform_(self._conv.conv.weight)

    def _stats(self, x, w):
        """Weighted mean and std over time of x (N, C, T) with weights w (N, C|1, T)."""
        mean = (w * x).sum(-1)
        var = (w * (x - mean[..., None]).pow(2)).sum(-1)
        return mean, var.clamp(min=self.eps).sqrt()

    def forward(self, x):
        x = x.transpose(1, 2)  # (N, C, T)
        uniform = torch.full_like(x[:, :1], 1.0 / x.size(-1))
        mean, std = self._stats(x, uniform)
        context = torch.cat([x, mean[..., None].expand_as(x), std[..., None].expand_as(x)], dim=1)
        score = torch.tanh(self._linear(context.transpose(1, 2))).transpose(1, 2)
        w = self._conv(score).softmax(-1)
        mean, std = self._stats(x, w)
        return self._final_layer(torch.cat([mean, std], dim=1))
