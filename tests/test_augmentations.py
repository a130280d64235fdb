import math

import pytest
import torch

from lib.augmentations import Augment

SR = 16000


def aug(**blocks):
    return Augment(blocks, sr=SR)


@pytest.fixture
def wave():
    torch.manual_seed(0)
    t = torch.arange(SR) / SR
    x = torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in (220, 440, 880)])
    return x + 0.05 * torch.randn_like(x)


@pytest.fixture
def spec():
    torch.manual_seed(0)
    return torch.rand(4, 84, 50) + 0.1


# --------------------------------------------------------------------------------------------------
# waveform domain
# --------------------------------------------------------------------------------------------------


def test_polarity_and_probability(wave):
    assert torch.equal(aug(polarity={"p": 1.0}).waveform(wave), -wave)
    assert torch.equal(aug(polarity={"p": 0.0}).waveform(wave), wave)
    torch.manual_seed(1)
    flipped = [aug(polarity={"p": 0.5}).waveform(wave)[0, 100] < 0 for _ in range(200)]
    assert 60 < sum(flipped) < 140  # about half of the examples


def test_gain_sets_the_peak(wave):
    y = aug(gain={"p": 1.0, "r": [0.3, 0.3]}).waveform(wave)
    assert torch.allclose(y.abs().amax(-1), torch.full((3,), 0.3), atol=1e-5)


def test_noise_mixes_at_the_requested_snr(wave):
    noise = torch.randn_like(wave)
    quiet = aug(noise={"p": 1.0, "snr": [80, 80]}).waveform(wave, noise=noise)
    assert torch.allclose(quiet, wave, atol=1e-3)
    loud = aug(noise={"p": 1.0, "snr": [0, 0]}).waveform(wave, noise=noise)
    residual = loud / loud.pow(2).mean(-1, keepdim=True).sqrt()
    signal = wave / wave.pow(2).mean(-1, keepdim=True).sqrt()
    corr = (residual * signal).mean(-1)
    assert torch.all((corr > 0.6) & (corr < 0.8))  # equal powers: 1/sqrt(2)
    assert torch.allclose(loud.abs().amax(-1), wave.abs().amax(-1), atol=1e-5)
    # without a noise batch the augmentation is skipped
    assert torch.equal(aug(noise={"p": 1.0, "snr": [0, 0]}).waveform(wave), wave)


def test_reqtime_equalises(wave):
    flat = aug(reqtime={"p": 1.0, "nfreqs": [2, 2], "gains": [0, 0], "qrange": [1, 1]})
    assert torch.allclose(flat.waveform(wave), wave, atol=1e-5)
    torch.manual_seed(0)
    boost = aug(reqtime={"p": 1.0, "nfreqs": [3, 3], "gains": [12, 12], "qrange": [0.5, 0.5]})
    y = boost.waveform(wave * 0.1)
    assert y.shape == wave.shape and y.abs().max() <= 1
    assert y.pow(2).sum() > 1.5 * (wave * 0.1).pow(2).sum()  # +12 dB bands add energy


def test_clipping(wave):
    hard = aug(clipping={"p": 1.0, "max_qtl": 0.3, "p_soft": 0.0}).waveform(wave)
    peak = hard.abs().amax(-1)
    assert torch.all(peak < wave.abs().amax(-1))
    # the threshold is a quantile of |x| at 1 - U * 0.3: at most 30% of samples exceed it
    assert torch.all((wave.abs() > peak[:, None] + 1e-6).float().mean(-1) <= 0.3 + 1e-3)
    torch.manual_seed(3)
    soft = aug(clipping={"p": 1.0, "max_qtl": 0.3, "p_soft": 1.0}).waveform(wave)
    torch.manual_seed(3)
    thr = aug(clipping={"p": 1.0, "max_qtl": 0.3, "p_soft": 0.0}).waveform(wave).abs().amax(-1)
    torch.testing.assert_close(soft, thr[:, None] * torch.tanh(2 * wave / thr[:, None]))


def test_length_truncates_the_batch(wave):
    torch.manual_seed(0)
    y = aug(length={"p": 1.0, "rmin": 0.5}).waveform(wave)
    assert y.shape[0] == 3 and SR // 2 <= y.shape[1] < SR
    assert torch.equal(y, wave[:, : y.shape[1]])


def test_compexp(wave):
    y = aug(compexp={"p": 1.0, "r": [2, 2]}).waveform(wave)
    torch.testing.assert_close(y, wave.sign() * wave.abs() ** 2)


# --------------------------------------------------------------------------------------------------
# CQT domain
# --------------------------------------------------------------------------------------------------


def test_specaugment_zeroes_stripes_or_a_rectangle(spec):
    torch.manual_seed(0)
    y = aug(specaugment={"p": 1.0, "n": 1, "full": True, "f_pc": 0.15, "t_pc": 0.15}).cqt(spec)
    assert y.shape == spec.shape
    for b in range(4):
        zero = y[b] == 0
        rows, cols = zero.all(1), zero.all(0)
        assert 1 <= rows.sum() <= int(0.15 * 84) and 1 <= cols.sum() <= int(0.15 * 50)
        assert torch.equal(zero, rows[:, None] | cols[None, :])
    torch.manual_seed(0)
    y = aug(specaugment={"p": 1.0, "n": 1, "full": False, "f_pc": 0.15, "t_pc": 0.15}).cqt(spec)
    for b in range(4):
        zero = y[b] == 0
        rows, cols = zero.any(1), zero.any(0)
        assert torch.equal(zero, rows[:, None] & cols[None, :])  # one rectangle
        assert not zero.all(1).any()


def test_timestretch_and_pitchstretch():
    ramp_t = torch.arange(40.0).repeat(2, 84, 1)  # value = frame index
    y = aug(timestretch={"p": 1.0, "r": [2, 2], "pad_mode": "repeat", "cut_mode": "start"}).cqt(
        ramp_t
    )
    assert y.shape == ramp_t.shape
    # twice as slow: the 40 output frames cover the first 20 input frames
    assert abs(y[0, 10, -1].item() - 19.75) < 0.6 and abs(y[0, 10, 20].item() - 10) < 0.6
    ramp_f = torch.stack([torch.arange(84.0)[:, None].repeat(1, 30) * (b + 1) for b in range(3)])
    z = aug(pitchstretch={"p": 1.0, "r": [0.5, 0.5], "pad_mode": "zeros", "cut_mode": "start"}).cqt(
        ramp_f
    )
    assert z.shape == ramp_f.shape
    # each example keeps its own content (the original wrote one example over the whole batch)
    assert torch.allclose(z[1, :42], 2 * z[0, :42]) and torch.allclose(z[2, :42], 3 * z[0, :42])
    assert torch.all(z[:, 42:] == 0)  # squeezed to half the bins, zero-padded above


def test_pitchtranspose(spec):
    up = aug(pitchtranspose={"p": 1.0, "r": [3, 3]}).cqt(spec)
    assert torch.equal(up[:, 3:], spec[:, :-3]) and torch.all(up[:, :3] == 0)
    down = aug(pitchtranspose={"p": 1.0, "r": [-2, -2]}).cqt(spec)
    assert torch.equal(down[:, :-2], spec[:, 2:]) and torch.all(down[:, -2:] == 0)


def test_reqcqt_is_a_smooth_gain_per_bin(spec):
    torch.manual_seed(0)
    y = aug(reqcqt={"p": 1.0, "lpf": 0.02, "r": [2, 2]}).cqt(spec)
    ratio = y / spec
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), atol=1e-5)  # constant in time
    gains = ratio[..., 0]
    assert torch.all(gains >= 1 - 1e-5) and torch.all(gains <= 10**0.2 + 1e-5)
    assert (gains.diff(dim=-1).abs().max() < 0.05).item()  # smooth across bins


def test_shingles_are_augmented_independently():
    torch.manual_seed(0)
    x = torch.rand(2, 5, 84, 20) + 0.1
    y = aug(pitchtranspose={"p": 1.0, "r": [-6, 6]}).cqt(x)
    assert y.shape == x.shape
    shifts = set()
    for b in range(2):
        for s in range(5):
            for k in range(-6, 7):
                moved = torch.zeros_like(x[b, s])
                if k >= 0:
                    moved[k:] = x[b, s, : 84 - k]
                else:
                    moved[:k] = x[b, s, -k:]
                if torch.equal(moved, y[b, s]):
                    shifts.add(k)
    assert len(shifts) > 3


def test_config_handling(wave):
    with pytest.raises(ValueError, match="unknown augmentation.*warp"):
        Augment({"warp": {"p": 1.0}})
    inactive = Augment({"polarity": {"p": 0.0}, "specaugment": {"p": 0}})
    assert inactive.conf == {}
    both = Augment({"polarity": {"p": 1.0}, "gain": {"p": 1.0, "r": [1, 1]}})
    orders = {tuple(both._active(("polarity", "gain"))) for _ in range(50)}
    assert orders == {("polarity", "gain"), ("gain", "polarity")}  # random order
    # waveform augmentations leave CQT-domain ones alone and vice versa
    assert torch.equal(Augment({"pitchtranspose": {"p": 1.0, "r": [2, 2]}}).waveform(wave), wave)


def test_original_config_on_a_training_batch():
    from omegaconf import OmegaConf

    conf = OmegaConf.load("config/shs-clews.yaml")
    augment = Augment(conf.augmentations, sr=conf.data.samplerate)
    assert set(augment.conf) == {"specaugment", "timestretch", "pitchtranspose"}
    torch.manual_seed(0)
    x = torch.rand(4, 8, 84, 200)
    y = augment.cqt(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    changed = (y != x).flatten(2).any(-1).float().mean().item()
    assert 0.3 < changed < 1.0  # p = 0.4 / 0.3 / 0.5 per shingle: most shingles are changed
