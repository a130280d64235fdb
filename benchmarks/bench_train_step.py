"""Training-step speed of models/clews.py on CPU against a plain eager PyTorch network with the
same layers (same FLOPs, written here from nn primitives only), and data-loader throughput.

Model: frontend [32, 64], blocks [1, 1, 1, 1], channels [64, 128, 256, 512], zdim 128;
16 tracks x 40 s (2 shingles of 20 s each), Adam. Loader: the demo config's dataset (20 s
excerpts, 4 versions per item) on a generated corpus, 2 workers.

    .venv/bin/python -m benchmarks.bench_train_step [--steps 5]
"""

import argparse
import math
import tempfile
import time

import torch
from omegaconf import OmegaConf
from torch import nn

import data_preproc
from lib import synth
from lib.dataset import Dataset
from lib.layers import make_cqt
from models.clews import Model

SR = 16000


def bench_conf():
    conf = OmegaConf.load("config/shs-clews.yaml").model
    conf.frontend.channels = [32, 64]
    conf.backbone.blocks = [1, 1, 1, 1]
    conf.backbone.channels = [64, 128, 256, 512]
    conf.zdim = 128
    return conf


class PlainBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        mid = int(max(cin, cout) * 0.5)
        mid += mid % 2
        self.bn_half = nn.BatchNorm2d(cin // 2)
        self.in_half = nn.InstanceNorm2d(cin // 2, affine=True)
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.skip = None
        if cin != cout or stride != 1:
            self.skip = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            )
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        h = torch.relu(torch.cat([self.bn_half(a), self.in_half(b)], 1))
        h = self.conv2(torch.relu(self.bn(self.conv1(h))))
        return self.gain * h + (x if self.skip is None else self.skip(x))


class PlainNet(nn.Module):
    """The same computation as the CLEWS model, without any of this project's helpers."""

    def __init__(self, conf):
        super().__init__()
        self.cqt = make_cqt(SR, conf.cqt.hoplen, conf.cqt.noctaves)
        self.pool = nn.AvgPool1d(conf.cqt.pool, conf.cqt.pool)
        c1, c2 = conf.frontend.channels
        self.front = nn.Sequential(
            nn.Conv2d(1, c1, (12, 3), (1, 2), bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, (12, 3), 2, bias=False),
        )
        blocks, cin = [], c2
        for n, cout, down in zip(conf.backbone.blocks, conf.backbone.channels, conf.backbone.down):
            for i in range(n):
                blocks.append(PlainBlock(cin, cout, down if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.p = nn.Parameter(torch.full((1, 1, 1), math.log(math.expm1(2.0))))
        self.bn = nn.BatchNorm1d(cin)
        self.fc = nn.Linear(cin, conf.zdim, bias=False)
        self.gain, self.bias = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))

    def forward(self, audio, shingle):
        with torch.no_grad():
            frames = audio.unfold(-1, shingle, shingle)
            nb, ns, nt = frames.shape
            h = self.pool(self.cqt(frames.reshape(nb * ns, nt))).unsqueeze(1).sqrt()
            h = h - h.amin((2, 3), keepdim=True)
            h = h / (h.amax((2, 3), keepdim=True) + 1e-6)
        h = self.gain * h + self.bias
        h = self.blocks(self.front(h)).flatten(2).clamp(min=1e-6)
        p = 1 + nn.functional.softplus(self.p)
        h = h.pow(p).mean(-1).pow(1 / p.squeeze(-1))
        return self.fc(self.bn(h)).view(nb, ns, -1)


def plain_loss(z, labels):
    nb, ns, dim = z.shape
    flat = z.reshape(nb * ns, dim)
    dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ flat.T + flat.pow(2).sum(1)).clamp(min=0)
    dist = (dist / dim).view(nb, ns, nb, ns).permute(0, 2, 1, 3).flatten(2)
    same = labels[:, None] == labels[None]
    pos = dist.mean(-1)[same & ~torch.eye(nb, dtype=torch.bool)].mean()
    neg = torch.exp(-5 * dist.amin(-1))[~same].mean()
    return pos + torch.log1p(neg / 1e-6)


def time_steps(step, steps):
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


def bench_model(steps):
    torch.manual_seed(0)
    conf = bench_conf()
    audio = torch.randn(16, 40 * SR) * 0.1
    labels = torch.arange(16) // 4
    ids = torch.arange(16)
    model = Model(conf, sr=SR).train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)

    def clews_step():
        optim.zero_grad(set_to_none=True)
        with torch.inference_mode():
            h = model.prepare(audio)
        z, _ = model.embed(h.clone())
        loss, _ = model.loss(labels, ids, z)
        loss.backward()
        optim.step()

    plain = PlainNet(conf).train()
    optim_plain = torch.optim.Adam(plain.parameters(), lr=1e-4)

    def plain_step():
        optim_plain.zero_grad(set_to_none=True)
        plain_loss(plain(audio, 20 * SR), labels).backward()
        optim_plain.step()

    params = (
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in plain.parameters()),
    )
    return time_steps(clews_step, steps), time_steps(plain_step, steps), params


def bench_loader(batches):
    with tempfile.TemporaryDirectory() as folder:
        synth.make_corpus(f"{folder}/audio", works=16, versions=4, seconds=40, seed=0)
        meta = f"{folder}/meta.pt"
        args = ["--dataset=folder", f"--path_audio={folder}/audio", "--ext_in=any"]
        data_preproc.main(args + [f"--fn_out={meta}", "--split=1,0,0", "--njobs=2"])
        conf = OmegaConf.load("config/demo-clews.yaml")
        conf.data.path = OmegaConf.create({"audio": f"{folder}/audio", "meta": meta})
        dataset = Dataset(conf.data, "train", augment=True)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=8, shuffle=True, num_workers=2, drop_last=True
        )
        items, start = 0, None
        for i, batch in enumerate(loader):
            if i == 1:  # the first batch pays for the workers' start-up
                start = time.perf_counter()
            elif i > 1:
                items += batch[0].size(0)
            if i >= batches:
                break
        return items / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    clews_ms, plain_ms, (n1, n2) = bench_model(args.steps)
    threads = torch.get_num_threads()
    print(f"training step, 16 tracks x 40 s, CPU ({threads} threads), {args.steps} steps")
    print(f"  models/clews.py:      {clews_ms:8.0f} ms/step   ({n1:,} parameters)")
    print(f"  plain eager baseline: {plain_ms:8.0f} ms/step   ({n2:,} parameters)")
    print(f"  ratio clews/plain:    {clews_ms / plain_ms:8.2f}     (target <= 1.0, noise ~5%)")
    rate = bench_loader(args.batches)
    print("data loader, demo config (20 s excerpts x 4 versions per item), 2 workers:")
    print(
        f"  {rate:.1f} items/s; one step of this benchmark's size consumes 4 items "
        f"(16 tracks) every {clews_ms / 1000:.2f} s = {4000 / clews_ms:.1f} items/s needed"
    )


if __name__ == "__main__":
    main()
