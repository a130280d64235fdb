"""An independent, functional CLEWS forward pass computed straight from a state dict with the
original's parameter names (spec sections 8.5, 9.1-9.3): the reference that checkpoints written
by the original code are checked against. It shares no code with ``models/clews.py``."""

import torch
import torch.nn.functional as F


def _bn(h, sd, key, eps=1e-5):
    return F.batch_norm(
        h,
        sd[f"{key}.running_mean"],
        sd[f"{key}.running_var"],
        sd[f"{key}.weight"],
        sd[f"{key}.bias"],
        training=False,
        eps=eps,
    )


def _ibn(h, sd, key):
    half = h.size(1) // 2
    a = _bn(h[:, :half], sd, f"{key}.bn")
    b = F.instance_norm(h[:, half:], weight=sd[f"{key}.inst.weight"], bias=sd[f"{key}.inst.bias"])
    return torch.cat([a, b], dim=1)


def _conv(h, weight, stride=1):
    return F.conv2d(h, weight, stride=stride, padding=weight.size(-1) // 2)


def cqt(x, sd, hop):
    """nnAudio's CQT1992v2 with the stored kernels: reflect padding of half the kernel,
    real/imaginary convolutions, librosa scaling, magnitude. x (N, T) -> (N, bins, frames)."""
    real, imag = sd["cqt.0.cqt_kernels_real"], sd["cqt.0.cqt_kernels_imag"]
    pad = real.size(-1) // 2
    x = F.pad(x[:, None], (pad, pad), mode="reflect")
    scale = sd["cqt.0.lenghts"].sqrt()[:, None]
    re = F.conv1d(x, real, stride=hop) * scale
    im = F.conv1d(x, imag, stride=hop) * scale
    return (re.pow(2) + im.pow(2)).sqrt()


@torch.no_grad()
def embed(audio, sd, conf, sr=16000):
    """Window embeddings (S, zdim) of ``audio`` (T,) whose length is exactly (S - 1) * hop + len
    samples (no padding), windows of the model's training shingle length and hop."""
    length, hop = int(conf.shingling.len * sr), int(conf.shingling.hop * sr)
    frames = audio.unfold(0, length, hop)  # (S, length)
    h = cqt(frames, sd, int(conf.cqt.hoplen * sr))
    h = F.avg_pool1d(h, conf.cqt.pool, conf.cqt.pool)[:, None]  # (S, 1, bins, frames)
    # CQTPrepare: magnitude compression, per-example min-max, learnable gain and bias
    h = h.clamp(min=0).pow(conf.frontend.cqtpow)
    lo = h.amin(dim=(2, 3), keepdim=True)
    h = h - lo
    h = h / (h.amax(dim=(2, 3), keepdim=True) + 1e-6)
    h = sd["frontend.0.gain"] * h + sd["frontend.0.bias"]
    h = F.relu(_bn(F.conv2d(h, sd["frontend.1.weight"], stride=(1, 2)), sd, "frontend.2"))
    h = F.conv2d(h, sd["frontend.4.weight"], stride=2)
    bb = conf.backbone
    i = 0
    for nblocks, down in zip(bb.blocks, bb.down):
        for j in range(nblocks):
            key, stride = f"backbone.{i}", down if j == 0 else 1
            main = F.relu(_ibn(h, sd, f"{key}.convs.0"))
            main = _conv(main, sd[f"{key}.convs.2.conv.weight"], stride)
            main = F.relu(_bn(main, sd, f"{key}.convs.3"))
            main = _conv(main, sd[f"{key}.convs.5.conv.weight"])
            if f"{key}.skip.2.conv.weight" in sd:
                skip = F.relu(_bn(h, sd, f"{key}.skip.0"))
                skip = _conv(skip, sd[f"{key}.skip.2.conv.weight"], stride)
            else:
                skip = h
            h = sd[f"{key}.gain"] * main + skip
            i += 1
    p = 1 + F.softplus(sd["pool.p"].reshape(()))
    h = h.flatten(2).clamp(min=1e-6).pow(p).mean(-1).pow(1 / p)
    h = F.batch_norm(
        h,
        sd["proj.0.running_mean"],
        sd["proj.0.running_var"],
        sd["proj.0.weight"],
        sd["proj.0.bias"],
        training=False,
        eps=1e-5,
    )
    return h @ sd["proj.1.weight"].T
