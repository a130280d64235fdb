"""Training augmentations, in the waveform domain (B, T) and the CQT domain (B, C, T) or
(B, N, C, T) (every shingle is augmented independently). Everything runs on the batch's device.

``Augment(conf.augmentations, sr)`` reads one config block per augmentation, each with a
probability ``p``; only blocks with ``p > 0`` are active and unknown names are an error. Each call
applies the active augmentations of its domain in a random order. Unless said otherwise, a
per-example Bernoulli(p) decides whether the augmented example replaces the original.
"""

import math

import torch
import torch.nn.functional as F

from lib.tensor_ops import force_length

WAVEFORM = ("polarity", "gain", "noise", "reqtime", "clipping", "length", "compexp")
CQT = ("specaugment", "timestretch", "pitchstretch", "pitchtranspose", "reqcqt")


def _uniform(shape, low, high, device):
    return low + (high - low) * torch.rand(shape, device=device)


def _log_uniform(shape, low, high, device):
    return torch.exp(_uniform(shape, math.log(low), math.log(high), device))


def _pick(x, augmented, p):
    """Per example: the augmented version with probability p, else the original."""
    keep = torch.rand(x.size(0), device=x.device) >= p
    return torch.where(keep.view(-1, *[1] * (x.ndim - 1)), x, augmented)


class Augment:
    def __init__(self, conf, sr=16000, random_order=True, eps=1e-6):
        # a typed config has every augmentation, None where absent
        conf = {} if conf is None else {k: v for k, v in conf.items() if v is not None}
        unknown = sorted(set(conf) - set(WAVEFORM) - set(CQT))
        if unknown:
            raise ValueError(
                f"unknown augmentation(s) {unknown}; valid: {', '.join(WAVEFORM + CQT)}"
            )
        self.conf = {name: params for name, params in conf.items() if params["p"] > 0}
        self.sr = sr
        self.random_order = random_order
        self.eps = eps

    def _active(self, domain):
        names = [n for n in self.conf if n in domain]
        if self.random_order and len(names) > 1:
            names = [names[i] for i in torch.randperm(len(names)).tolist()]
        return names

    # ---------------------------------------------------------------------------------------------

    def waveform(self, x, noise=None):
        """x (B, T) in [-1, 1]; ``noise`` (B, T) is needed by the 'noise' augmentation only."""
        for name in self._active(WAVEFORM):
            if name == "noise" and noise is None:
                continue
            params = self.conf[name]
            if name == "noise":
                x = self.noise(x, noise, params)
            else:
                x = getattr(self, name)(x, params)
        return x

    def polarity(self, x, params):
        return _pick(x, -x, params["p"])

    def gain(self, x, params):
        peak = x.abs().amax(-1, keepdim=True)
        target = _uniform((x.size(0), 1), *params["r"], x.device)
        return _pick(x, (x * target / (peak + self.eps)).clamp(-1, 1), params["p"])

    def noise(self, x, noise, params):
        noise = noise[..., : x.size(-1)]
        snr = _uniform((x.size(0), 1), *params["snr"], x.device)
        signal = x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)
        noise = noise / (noise.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)
        mixed = signal * 10 ** (snr / 20) + noise
        peak = x.abs().amax(-1, keepdim=True)
        mixed = mixed * peak / (mixed.abs().amax(-1, keepdim=True) + self.eps)
        return _pick(x, mixed, params["p"])

    def reqtime(self, x, params):
        """Random peaking equalisers (one set for the whole batch), applied in the frequency
        domain with their complex response."""
        low, high = params["nfreqs"]
        count = int(torch.randint(int(low), int(high) + 1, (1,)))
        nfft = x.size(-1)
        omega = 2 * math.pi * torch.fft.rfftfreq(nfft, device=x.device)
        response = torch.ones_like(omega, dtype=torch.complex64)
        for _ in range(count):
            gain_db = float(_uniform((), *params["gains"], "cpu"))
            freq = float(_log_uniform((), 20.0, 0.49 * self.sr, "cpu"))
            q = float(_log_uniform((), *params["qrange"], "cpu"))
            response = response * _peaking_response(omega, gain_db, 2 * math.pi * freq / self.sr, q)
        y = torch.fft.irfft(torch.fft.rfft(x) * response, n=nfft).clamp(-1, 1)
        return _pick(x, y, params["p"])

    def clipping(self, x, params):
        qtl = 1 - torch.rand(x.size(0), 1, device=x.device) * params["max_qtl"]
        mags = x.abs().sort(-1).values
        idx = (qtl * (x.size(-1) - 1)).round().long()
        thr = mags.gather(-1, idx).clamp(min=self.eps)
        soft = thr * torch.tanh(2 * x / thr)
        hard = torch.maximum(torch.minimum(x, thr), -thr)
        use_soft = torch.rand(x.size(0), 1, device=x.device) < params["p_soft"]
        return _pick(x, torch.where(use_soft, soft, hard), params["p"])

    def length(self, x, params):
        """With probability p, the whole batch is truncated to a random fraction of its length."""
        if torch.rand(1).item() >= params["p"]:
            return x
        frac = float(_uniform((), params["rmin"], 1.0, "cpu"))
        return x[..., : max(1, int(frac * x.size(-1)))]

    def compexp(self, x, params):
        exponent = _uniform((x.size(0), 1), *params["r"], x.device)
        return _pick(x, x.sign() * x.abs().pow(exponent), params["p"])

    # ---------------------------------------------------------------------------------------------

    def cqt(self, x):
        """x (B, C, T) or (B, N, C, T) magnitudes; shingles are augmented independently."""
        shape = x.shape
        if x.ndim == 4:
            x = x.reshape(-1, *shape[2:])
        for name in self._active(CQT):
            x = getattr(self, name)(x, self.conf[name])
        return x.reshape(shape)

    def specaugment(self, x, params):
        nb, nc, nt = x.shape
        y = x.clone()
        repeats = int(torch.randint(1, int(params.get("n", 1)) + 1, (1,)))
        bins = torch.arange(nc, device=x.device).view(1, nc, 1)
        frames = torch.arange(nt, device=x.device).view(1, 1, nt)
        for _ in range(repeats):
            fmask = _band(nb, nc, params["f_pc"], x.device, bins)
            tmask = _band(nb, nt, params["t_pc"], x.device, frames)
            mask = (fmask | tmask) if params.get("full", True) else (fmask & tmask)
            y = y.masked_fill(mask, 0)
        return _pick(x, y, params["p"])

    def timestretch(self, x, params):
        return self._stretch(x, params, dim=-1)

    def pitchstretch(self, x, params):
        return self._stretch(x, params, dim=-2)

    def _stretch(self, x, params, dim):
        """Resize one axis of each example by a random factor, then pad/cut back to its size."""
        size = x.size(dim)
        out = x.clone()
        chosen = torch.rand(x.size(0)) < params["p"]
        for i in torch.nonzero(chosen).flatten().tolist():
            factor = float(_uniform((), *params["r"], "cpu"))
            new = max(1, int(size * factor))
            target = (x.size(-2), new) if dim == -1 else (new, x.size(-1))
            resized = F.interpolate(
                x[i][None, None], size=target, mode="bilinear", antialias=True, align_corners=False
            )[0, 0]
            out[i] = force_length(
                resized,
                size,
                dim=dim,
                pad_mode=params.get("pad_mode", "repeat"),
                cut_mode=params.get("cut_mode", "random"),
            )
        return out

    def pitchtranspose(self, x, params):
        low, high = (int(v) for v in params["r"])
        shifts = torch.randint(low, high + 1, (x.size(0),), device=x.device)
        nc = x.size(-2)
        source = torch.arange(nc, device=x.device).view(1, nc) - shifts.view(-1, 1)
        valid = (source >= 0) & (source < nc)
        gathered = x.gather(-2, source.clamp(0, nc - 1).unsqueeze(-1).expand_as(x))
        y = gathered * valid.unsqueeze(-1)
        return _pick(x, y, params["p"])

    def reqcqt(self, x, params):
        """Multiply each example by a smooth random gain curve over the CQT bins (dB scale)."""
        nb, nc, _ = x.shape
        walk = torch.randn(nb, 1, nc, device=x.device).cumsum(-1)
        walk = _lowpass(walk, params["lpf"])
        lo, hi = walk.amin(-1, keepdim=True), walk.amax(-1, keepdim=True)
        walk = (walk - lo) / (hi - lo + self.eps)
        scale = _uniform((nb, 1, 1), *params["r"], x.device)
        gains = 10 ** (walk * scale / 10)
        return _pick(x, x * gains.transpose(1, 2), params["p"])


def _band(nb, size, fraction, device, positions):
    """Per example a random band [start, start + length) along an axis, as a bool mask."""
    length = (torch.rand(nb, device=device) * fraction * size).floor().clamp(min=1).long()
    start = (torch.rand(nb, device=device) * (size - length)).floor().long()
    shape = [nb] + [1] * (positions.ndim - 1)
    start, length = start.view(shape), length.view(shape)
    return (positions >= start) & (positions < start + length)


def _peaking_response(omega, gain_db, w0, q):
    """Complex frequency response of an RBJ peaking-EQ biquad at angular frequencies ``omega``."""
    amp = 10 ** (gain_db / 40)
    alpha = math.sin(w0) / (2 * q)
    b = [1 + alpha * amp, -2 * math.cos(w0), 1 - alpha * amp]
    a = [1 + alpha / amp, -2 * math.cos(w0), 1 - alpha / amp]
    z1 = torch.exp(-1j * omega.to(torch.float32))
    z2 = z1 * z1
    return (b[0] + b[1] * z1 + b[2] * z2) / (a[0] + a[1] * z1 + a[2] * z2)


def _lowpass(x, cutoff, zeros=4):
    """Windowed-sinc low-pass of (B, 1, N) signals; ``cutoff`` in cycles per sample."""
    half = max(1, int(zeros / cutoff / 2))
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = (
        2
        * cutoff
        * torch.sinc(2 * cutoff * t)
        * torch.hann_window(2 * half + 1, periodic=False, device=x.device, dtype=x.dtype)
    )
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    padded = F.pad(x, (half, half), mode="replicate")
    return F.conv1d(padded, kernel)
