"""Retrieval engine against a plain per-query loop of the definition.

100 queries x 2,000 candidate tracks, 56 windows each, 1024-d fp16 embeddings, about a third of
the windows masked (shorter tracks), ``bpwr-10``. The plain loop is written here from the
definitions of the segment-distance reduction and of the metrics: per query, all segment distances to every candidate,
the iterative best-pairs-without-replacement reduction, then AP by sorting. The engine is
``lib.retrieval.evaluate``. The floor is the time of the engine's distance products alone (the
same matrix products, nothing else).

    .venv/bin/python -m benchmarks.bench_eval                      # CPU, the issue's setting
    .venv/bin/python -m benchmarks.bench_eval --device cuda --queries 20000 --candidates 20000 \\
        --skip-plain                                             # GPU catalogue scale
"""

import argparse
import time

import torch

from lib import retrieval as R


class Metric:
    segment_metric = "nsqeuc"


def make_catalogue(ntracks, windows, dim, versions=5, seed=0):
    """Cliques of ``versions`` tracks sharing a random base (plus per-track noise), fp16, with
    track lengths uniform in [windows / 3, windows] windows (about a third masked)."""
    gen = torch.Generator().manual_seed(seed)
    cliques = torch.arange(ntracks) // versions
    base = torch.randn(int(cliques.max()) + 1, windows, dim, generator=gen)
    z = torch.empty(ntracks, windows, dim, dtype=torch.float16)
    for start in range(0, ntracks, 1000):  # in slices: 20k x 56 x 1024 fp32 would be 4.6 GB
        part = slice(start, start + 1000)
        noise = torch.randn(z[part].shape, generator=gen)
        shift = torch.randint(0, windows, (1,), generator=gen).item()
        z[part] = (base[cliques[part]].roll(shift, dims=1) + 3.0 * noise).half()
    lengths = torch.randint(windows // 3, windows + 1, (ntracks,), generator=gen)
    mask = torch.arange(windows)[None, :] >= lengths[:, None]
    z[mask] = 0
    return R.Embeddings(cliques, torch.arange(ntracks), z, mask)


###################################################################################################
# The plain definition, one query at a time
###################################################################################################


def plain_bpwr(dist, mask, n, eps=1e-7):
    """Spec 7.5 for one query against C candidates: dist, mask (C, S1, S2)."""
    if dist.size(1) > dist.size(2):
        dist, mask = dist.transpose(1, 2), mask.transpose(1, 2)
    n = max(1, min(n, dist.size(1)))
    dist = dist + eps * torch.rand_like(dist)
    available = ~mask
    selected = torch.zeros_like(mask)
    for it in range(n):
        best = dist.masked_fill(~available, 1e12).amin(dim=(1, 2), keepdim=True)
        taken = available & (dist <= best)
        selected |= taken
        if it < n - 1:
            available &= ~(taken.any(2, keepdim=True) | taken.any(1, keepdim=True))
    count = selected.sum(dim=(1, 2))
    mean = dist.masked_fill(~selected, 0).sum(dim=(1, 2)) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, 1e12))


def plain_ap(dist, relevant):
    order = torch.argsort(dist, stable=True)
    rel = relevant[order].double()
    precision = rel.cumsum(0) / torch.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / rel.sum())


def plain_loop(queries, candidates, n):
    cz = candidates.z.float()
    c_flat = cz.reshape(-1, cz.size(-1))
    aps = []
    for i in range(len(queries)):
        q = queries.z[i].float()
        dist = q.pow(2).sum(-1)[:, None] - 2 * q @ c_flat.T + c_flat.pow(2).sum(-1)[None, :]
        dist = dist.clamp(min=0) / q.size(-1)
        dist = dist.view(q.size(0), len(candidates), -1).permute(1, 0, 2)
        mask = queries.mask[i][None, :, None] | candidates.mask[:, None, :]
        track = plain_bpwr(dist, mask, n)
        same_song = candidates.ids == queries.ids[i]
        track[same_song] = float("inf")  # the query itself: last, and not relevant
        relevant = (candidates.cliques == queries.cliques[i]) & ~same_song
        aps.append(plain_ap(track, relevant))
    return torch.tensor(aps, dtype=torch.float64)


###################################################################################################


def products_only(queries, candidates, device, max_elements):
    """The engine's matrix products with nothing else: the floor of any exact engine."""
    nq, sq, dim = queries.z.shape
    nc, sc, _ = candidates.z.shape
    bq, bc = R.block_sizes(sq, sc, nq, nc, max_elements)
    half = device.type == "cuda"
    cast = (lambda t: t.to(device).half()) if half else (lambda t: t.to(device).float())
    chunks = [cast(candidates.z[c : c + bc].reshape(-1, dim)) for c in range(0, nc, bc)]
    sync()
    start = time.perf_counter()
    for q0 in range(0, nq, bq):
        q = cast(queries.z[q0 : q0 + bq].reshape(-1, dim))
        for c in chunks:
            q @ c.T
    sync()
    return time.perf_counter() - start


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--windows", type=int, default=56)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--redux", type=int, default=10, help="N of bpwr-N")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-elements", type=int, default=R.DEFAULT_MAX_ELEMENTS)
    parser.add_argument("--skip-plain", action="store_true", help="no plain loop (large runs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    candidates = make_catalogue(args.candidates, args.windows, args.dim)
    step = max(1, args.candidates // args.queries)
    queries = candidates.subset(torch.arange(0, args.candidates, step)[: args.queries])
    masked = candidates.mask.float().mean().item()
    print(
        f"{len(queries)} queries x {len(candidates)} candidates, {args.windows} windows, "
        f"{args.dim}-d fp16, {100 * masked:.0f}% windows masked, bpwr-{args.redux}, "
        f"device {device}, {torch.get_num_threads()} CPU threads"
    )
    redux = f"bpwr-{args.redux}"
    R.evaluate(Metric(), queries.subset(slice(0, 2)), candidates.subset(slice(0, 50)), redux)

    floor = products_only(queries, candidates, device, args.max_elements)
    sync()
    start = time.perf_counter()
    _, engine, _, _ = R.evaluate(
        Metric(), queries, candidates, redux, device=device, max_elements=args.max_elements
    )
    sync()
    t_engine = time.perf_counter() - start
    print(f"distance products alone (floor): {floor:8.2f} s")
    print(
        f"engine:                          {t_engine:8.2f} s  ({t_engine / floor:.2f}x the floor)"
    )
    print(f"engine MAP = {engine['AP'].nanmean().item():.4f}")
    if args.skip_plain:
        return
    start = time.perf_counter()
    plain = plain_loop(queries, candidates, args.redux)
    t_plain = time.perf_counter() - start
    diff = (plain - engine["AP"]).abs().max().item()
    print(f"plain per-query loop:            {t_plain:8.2f} s")
    print(f"speed-up engine vs plain loop:   {t_plain / t_engine:8.2f}x")
    print(f"max |AP engine - AP plain| = {diff:.2e} (MAP plain {plain.mean().item():.4f})")
    if diff > 1e-5:
        raise SystemExit("the engine's APs differ from the plain definition by more than 1e-5")


if __name__ == "__main__":
    main()
