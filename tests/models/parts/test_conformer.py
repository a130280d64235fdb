"""The Conformer encoder and attentive statistics pooling of CoverHunter-C against their
definitions (the WeNet-style Conformer CoverHunter uses), computed here step by step."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.parts import conformer as C


def test_subsampling_shapes_of_a_20_s_shingle():
    sub = C.Conv2dSubsampling4(96, 128)
    assert sub.out[0].in_features == 128 * 23
    out = sub(torch.randn(2, 501, 96))
    assert out.shape == (2, 124, 128)  # ((501 - 1) // 2 - 1) // 2
    for t in (7, 8, 30, 77):
        assert sub(torch.randn(1, t, 96)).shape[1] == ((t - 1) // 2 - 1) // 2


def test_positional_encoding_scales_and_returns_the_sinusoid_table():
    enc = C.RelPositionalEncoding(8, dropout=0.0).eval()
    x = torch.randn(2, 5, 8)
    h, pos = enc(x)
    assert torch.allclose(h, x * math.sqrt(8))
    assert pos.shape == (1, 5, 8)
    t, i = 3, 2  # position 3, pair of channels (4, 5)
    angle = t / 10000 ** (2 * i / 8)
    assert pos[0, t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert pos[0, t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    with pytest.raises(ValueError, match="longer than the 5000 positions"):
        enc(torch.randn(1, 5001, 8))


def test_relative_attention_by_hand():
    torch.manual_seed(0)
    att = C.RelPositionMultiHeadedAttention(2, 8).eval()
    x, pos = torch.randn(3, 5, 8), torch.randn(1, 5, 8)
    got = att(x, pos)
    q, k, v = att.linear_q(x), att.linear_k(x), att.linear_v(x)
    p = att.linear_pos(pos)[0]
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        content = (q[..., cols] + att.pos_bias_u[h]) @ k[..., cols].transpose(1, 2)
        position = (q[..., cols] + att.pos_bias_v[h]) @ p[:, cols].T
        heads.append(((content + position) / 2).softmax(-1) @ v[..., cols])
    want = att.linear_out(torch.cat(heads, dim=-1))
    assert torch.allclose(got, want, atol=1e-5)


def test_convolution_module_by_hand():
    torch.manual_seed(1)
    mod = C.ConvolutionModule(4, kernel=3).eval()
    x = torch.randn(2, 6, 4)
    got = mod(x)
    h = mod.pointwise_conv1(x.transpose(1, 2))
    h = h[:, :4] * torch.sigmoid(h[:, 4:])
    h = F.conv1d(F.pad(h, (1, 1)), mod.depthwise_conv.weight, mod.depthwise_conv.bias, groups=4)
    h = F.silu(mod.norm(h))
    assert torch.allclose(got, mod.pointwise_conv2(h).transpose(1, 2), atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        C.ConvolutionModule(4, kernel=4)


def test_conformer_layer_is_the_macaron_sequence():
    torch.manual_seed(2)
    layer = C.ConformerLayer(8, 16, nheads=2, kernel=3).eval()
    x, pos = torch.randn(2, 5, 8), torch.randn(1, 5, 8)
    h = x + 0.5 * layer.feed_forward_macaron(layer.norm_ff_macaron(x))
    h = h + layer.self_attn(layer.norm_mha(h), pos)
    h = h + layer.conv_module(layer.norm_conv(h))
    h = h + 0.5 * layer.feed_forward(layer.norm_ff(h))
    assert torch.allclose(layer(x, pos), layer.norm_final(h), atol=1e-6)


def test_encoder_output_and_training_mode_dropout():
    torch.manual_seed(3)
    enc = C.ConformerEncoder(96, dim=16, hidden=32, nblocks=2)
    x = torch.randn(2, 101, 96)
    enc.eval()
    a, b = enc(x), enc(x)
    assert a.shape == (2, 24, 16) and torch.equal(a, b)
    # the final LayerNorm: zero mean, unit variance per frame (default affine init)
    assert torch.allclose(a.mean(-1), torch.zeros(2, 24), atol=1e-5)
    enc.train()
    assert not torch.equal(enc(x), enc(x))  # dropout active while training


def test_attentive_statistics_pooling_by_hand():
    torch.manual_seed(4)
    pool = C.AttentiveStatisticsPooling(4, out=3)
    x = torch.randn(2, 7, 4)
    got = pool(x)
    assert got.shape == (2, 3)
    xt = x.transpose(1, 2)
    mean, std = xt.mean(-1, keepdim=True), xt.var(-1, unbiased=False, keepdim=True).sqrt()
    context = torch.cat([xt, mean.expand_as(xt), std.expand_as(xt)], dim=1)
    w = pool._conv(torch.tanh(pool._linear(context.transpose(1, 2))).transpose(1, 2))
    w = w.softmax(-1)
    mu = (w * xt).sum(-1)
    sigma = (w * (xt - mu[..., None]) ** 2).sum(-1).sqrt()
    want = torch.cat([mu, sigma], dim=1) @ pool._final_layer.weight.T
    assert torch.allclose(got, want, atol=1e-5)
    # constant input: the std floor keeps the gradient finite
    flat = torch.ones(1, 5, 4, requires_grad=True)
    pool(flat).sum().backward()
    assert torch.isfinite(flat.grad).all()
