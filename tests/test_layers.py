import math

import pytest
import torch

from lib.layers import (
    CompactCqt,
    CQTPrepare,
    GeMPool,
    InstanceBatchNorm2d,
    MyIBNResBlock,
    PadConv2d,
    compact_cqts,
    make_cqt,
)


def test_cqt_frames_and_pitch():
    sr = 16000
    cqt = make_cqt(sr, hoplen=0.02, noctaves=7)
    t = torch.arange(sr * 2) / sr
    spec = cqt(torch.sin(2 * math.pi * 440 * t)[None])
    assert spec.shape == (1, 84, 2 * sr // 320 + 1)
    assert cqt.cqt_kernels_real.shape == (84, 1, 16384)
    peak_bin = spec[0, :, 20:-20].mean(-1).argmax().item()
    assert peak_bin == round(12 * math.log2(440 / 32.70))  # A4 above C1
    assert sum(p.numel() for p in cqt.parameters() if p.requires_grad) == 0


def test_cqt_prepare_normalises_and_is_deterministic_in_eval():
    prep = CQTPrepare(pow=0.5).eval()
    h = torch.rand(3, 1, 84, 50) * 7
    out = prep(h)
    assert torch.equal(out, prep(h))
    flat = out.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(3), atol=1e-6)
    assert torch.allclose(flat.max(1).values, torch.ones(3), atol=1e-5)
    prep.train()
    assert not torch.equal(prep(h), prep(h))  # U(0, eps) noise while training
    assert (prep(h) - out).abs().max() < 1e-5
    with pytest.raises(ValueError):
        CQTPrepare(noise="sometimes")


def test_instance_batch_norm_halves():
    torch.manual_seed(0)
    ibn = InstanceBatchNorm2d(8).train()
    h = torch.randn(4, 8, 5, 6) * 3 + 1
    out = ibn(h)
    ref_bn = torch.nn.functional.batch_norm(h[:, :4], None, None, training=True)
    ref_in = torch.nn.functional.instance_norm(h[:, 4:])
    assert torch.allclose(out[:, :4], ref_bn, atol=1e-5)
    assert torch.allclose(out[:, 4:], ref_in, atol=1e-5)
    with pytest.raises(ValueError):
        InstanceBatchNorm2d(7)


def test_gem_pool():
    pool = GeMPool()
    assert (1 + torch.nn.functional.softplus(pool.p)).item() == pytest.approx(3.0)
    h = torch.rand(2, 5, 3, 4) + 0.1
    want = h.flatten(2).pow(3).mean(-1).pow(1 / 3)
    assert torch.allclose(pool(h), want, atol=1e-6)
    assert pool.p.shape == (1, 1, 1)


def test_resblock_starts_as_its_skip_path_and_downsamples():
    torch.manual_seed(0)
    h = torch.randn(2, 16, 9, 11)
    same = MyIBNResBlock(16, 16).eval()
    assert isinstance(same.skip, torch.nn.Identity)
    assert torch.equal(same(h), h)  # gain is initialised to 0
    down = MyIBNResBlock(16, 32, stride=2).eval()
    out = down(h)
    assert out.shape == (2, 32, 5, 6)
    assert torch.allclose(out, down.skip(h))
    # mid width: int(max(cin, cout) * 0.5) rounded up to even
    assert down.convs[2].conv.out_channels == 16
    assert MyIBNResBlock(18, 18).convs[2].conv.out_channels == 10
    assert PadConv2d(3, 4, 5)(torch.randn(1, 3, 7, 7)).shape == (1, 4, 7, 7)


def test_bytecover_body_shapes_and_size_of_the_original():
    from lib.layers import ResNet50BottBlock, bytecover_frontend, bytecover_resblocks

    with torch.device("meta"):
        frontend, blocks = bytecover_frontend(2048), bytecover_resblocks(2048)
        stem = frontend(torch.empty(1, 84, 1304))  # a 150 s shingle
        assert stem.shape == (1, 256, 38, 324)
        out = blocks(stem)
    assert out.shape == (1, 2048, 10, 81)
    nparams = sum(p.numel() for p in [*frontend.parameters(), *blocks.parameters()])
    assert nparams == 45_527_040
    assert all(isinstance(b, ResNet50BottBlock) for b in blocks)
    assert [b.convs[0].out_channels for b in blocks] == [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    ibn = [isinstance(b.convs[1], InstanceBatchNorm2d) for b in blocks]
    assert ibn == [True] * 13 + [False] * 3
    with pytest.raises(ValueError, match="multiple of 16"):
        bytecover_frontend(100)


def test_bottleneck_block_by_hand():
    from lib.layers import ResNet50BottBlock

    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    same = ResNet50BottBlock(8, 8).eval()
    assert isinstance(same.residual, torch.nn.Identity)
    assert torch.allclose(same(x), torch.relu(same.convs(x) + x))
    down = ResNet50BottBlock(8, 16, stride=2).eval()
    assert down.convs[0].out_channels == 4 and down.residual[0].kernel_size == (3, 3)
    assert down(x).shape == (2, 16, 3, 3)
    assert torch.allclose(down(x), torch.relu(down.convs(x) + down.residual(x)))


@pytest.mark.parametrize(
    "sr, hoplen, noctaves, nbinsoct, fscale",
    [(16000, 0.02, 7, 12, 1.0), (16000, 0.02, 6, 12, 0.5), (22050, 0.0928798, 6, 12, 0.5),
     (16000, 0.04, 5, 24, 1.0)],
)
def test_compact_cqt_gives_the_transforms_output_with_a_fraction_of_the_work(
    sr, hoplen, noctaves, nbinsoct, fscale
):
    # CLEWS's, the small baselines', MOVE's at 22.05 kHz and a 24-bins-per-octave one; lengths
    # just above the reflect padding's minimum, on and off the hop
    cqt = make_cqt(sr, hoplen, noctaves, nbinsoct, fscale).eval()
    compact = CompactCqt(cqt).eval()
    generator = torch.Generator().manual_seed(0)
    hop, width = cqt.hop_length, cqt.kernel_width
    for length in (width // 2 + 1, 20 * sr, 20 * sr + hop // 3, 7 * hop + width):
        x = 0.1 * torch.randn(3, length, generator=generator)
        with torch.inference_mode():
            want, got = cqt(x), compact(x)
        assert got.shape == want.shape, length
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-6, length
    multiply_adds = sum(b.numel() for n, b in compact.named_buffers() if "kernels" in n)
    full = cqt.cqt_kernels_real.numel() + cqt.cqt_kernels_imag.numel()
    if (sr, hoplen, noctaves) == (16000, 0.02, 7):
        assert multiply_adds / full < 0.15  # CLEWS: 16,384-sample kernels, ~8,200 used at most


def test_compact_cqts_replaces_every_transform_of_a_model_in_place():
    model = torch.nn.Sequential(
        torch.nn.Sequential(make_cqt(16000, 0.02, 2, 12), torch.nn.AvgPool1d(5, 5)),
        make_cqt(16000, 0.02, 3, 12),
    )
    assert compact_cqts(model) == 2
    assert isinstance(model[0][0], CompactCqt) and isinstance(model[1], CompactCqt)
    assert compact_cqts(model) == 0
