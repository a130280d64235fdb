import math

import pytest
import torch

from lib import eval as E
from lib import retrieval as R
from lib import tensor_ops as T

REDUCTIONS = [
    "min",
    "max",
    "mean",
    "minmean",
    "meanmin",
    "bpwr",
    "bpwr-1",
    "bpwr-3",
    "bpwr-10",
    "best",
    "best-3",
    "worst-2",
    "bestmin-2",
    "smeanmin",
    "sminmean",
    "smin",
    "sbpwr-2",
]


def random_set(n, s, d, seed, masked=False, cliques=3):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, s, d, generator=gen).half()
    mask = torch.zeros(n, s, dtype=torch.bool)
    if masked:
        lengths = torch.randint(1, s + 1, (n,), generator=gen)
        mask = torch.arange(s)[None, :] >= lengths[:, None]
        mask[0] = True  # a track with no valid window at all
    ids = torch.arange(n) + 1000 * seed
    return R.Embeddings(torch.arange(n) % cliques, ids, z, mask)


def definition(q, c, redux, metric="nsqeuc"):
    """The plain definition: all segment distances in float64, then distance_tensor_redux."""
    qz, cz = q.z.double(), c.z.double()
    rows_q, rows_c = qz.reshape(-1, qz.size(-1)), cz.reshape(-1, cz.size(-1))
    if metric == "cos":
        dist = T.pairwise_distance_matrix(rows_q, rows_c, mode="cos")
    else:
        dist = T.squared_euclidean(rows_q, rows_c)
    if metric == "nsqeuc":
        dist = dist / qz.size(-1)
    dist = dist.view(len(q), qz.size(1), len(c), cz.size(1)).permute(0, 2, 1, 3)
    mask = q.mask[:, None, :, None] | c.mask[None, :, None, :]
    return T.distance_tensor_redux(dist, redux, mask=mask)


@pytest.mark.parametrize("metric", ["nsqeuc", "cos"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("redux", REDUCTIONS)
def test_block_distances_match_the_definition(redux, masked, metric):
    q = random_set(5, 4, 16, seed=1, masked=masked)
    c = random_set(7, 6, 16, seed=2, masked=masked)
    got = R.block_distances(q, c, redux, metric=metric).double()
    want = definition(q, c, redux, metric)
    assert got.shape == (5, 7)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    if masked:  # the track without any valid window is never a match
        far = 0.99 * T.INF  # float32 cannot hold 1e12 exactly
        assert bool((got[0] > far).all()) and bool((got[:, 0] > far).all())
        assert bool((got[1:, 1:] < 1e3).all())


@pytest.mark.parametrize("masked", [False, True])
def test_randmin_returns_one_of_the_row_minima(masked):
    q = random_set(3, 4, 8, seed=3, masked=masked)
    c = random_set(4, 5, 8, seed=4, masked=masked)
    got = R.block_distances(q, c, "randmin").double()
    row_minima = definition(q, c, "min")  # shape check only; row minima computed below
    qz, cz = q.z.double(), c.z.double()
    for i in range(len(q)):
        for j in range(len(c)):
            if q.mask[i].all() or c.mask[j].all():
                assert got[i, j] > 0.99 * T.INF
                continue
            d = T.squared_euclidean(qz[i], cz[j]) / qz.size(-1)
            d = d.masked_fill(c.mask[j][None, :], math.inf)[~q.mask[i]]
            minima = d.min(-1).values
            assert (minima - got[i, j]).abs().min() < 1e-5
    assert row_minima.shape == got.shape


def test_bpwr_takes_disjoint_pairs_greedily():
    # one query of 3 segments, one candidate of 4: a matrix whose reductions were computed by hand
    golden = torch.tensor([[0.5, 0.8, 0.1, 0.2], [0.3, 0.6, 0.5, 0.9], [0.4, 0.7, 0.35, 0.45]])
    x = golden[None, :, None, :].clone()  # (bq, Sq, bc, Sc) with zero query norms
    heads, cols = x.min(-1)
    heads, cols = heads.permute(0, 2, 1).reshape(1, 3), cols.permute(0, 2, 1).reshape(1, 3)
    assert R.ALPHA["nsqeuc"] == -2 and R.FLOOR["cos"] == -math.inf
    qq = torch.zeros(1, 3)
    for num, want in ((1, 0.1), (2, 0.2), (None, (0.1 + 0.3 + 0.45) / 3)):
        got = R._greedy_pairs(x, qq, heads, cols, num)
        assert got.item() == pytest.approx(want, abs=1e-6)


def test_bpwr_ties_give_the_tied_value():
    z = torch.ones(1, 4, 8).half()  # every segment identical: every distance 0
    q = R.Embeddings(torch.tensor([0]), torch.tensor([0]), z, None)
    got = R.block_distances(q, q, "bpwr-3")
    assert got.item() == 0


@pytest.mark.parametrize("redux", ["bpwr-2", "min", "meanmin", "mean", "sminmean"])
def test_blocks_and_chunks_do_not_change_the_distances(redux):
    q = random_set(11, 3, 8, seed=5, masked=True)
    c = random_set(13, 5, 8, seed=6, masked=True)

    class Metric:
        segment_metric = "nsqeuc"

    whole = R.query_block_distances(Metric(), q, c, redux, "cpu", bc=13)
    for bc in (1, 4, 7):
        parts = torch.cat(
            [
                R.query_block_distances(Metric(), q.subset(slice(i, i + 3)), c, redux, "cpu", bc)
                for i in range(0, 11, 3)
            ]
        )
        # a matrix product of another shape may round differently in the last bit
        assert torch.allclose(parts, whole, rtol=1e-6, atol=1e-6)


def test_block_sizes_bound_the_memory_and_ignore_the_world_size():
    bq, bc = R.block_sizes(56, 56, 20000, 20000, max_elements=2**23)
    assert bq * bc * 56 * 56 <= 2**23
    assert bq >= 1 and bc >= 1
    assert R.block_sizes(4, 4, 3, 5) == (3, 5)
    assert R.block_sizes(200, 200, 10, 10, max_elements=100) == (1, 1)


class SquaredEuclidean:
    """What the engine reads of a model: its segment metric and default reduction."""

    segment_metric = "nsqeuc"
    default_redux = "min"


def plain_metrics(q, c, redux):
    """Per-query loop of the definition (segment distances reduced per candidate, then the
    metrics of lib.eval with the query excluded)."""
    out = {k: [] for k in ("AP", "R1", "ARP")}
    for i in range(len(q)):
        d = definition(q.subset([i]), c, redux)[0]
        rel = c.cliques == q.cliques[i]
        excl = c.ids == q.ids[i]
        out["AP"].append(E.average_precision(d, rel, excl))
        out["R1"].append(E.rank_of_first_correct(d, rel, excl))
        out["ARP"].append(E.rank_percentile(d, rel, excl))
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("redux", ["bpwr-2", "meanmin", "mean"])
def test_evaluate_matches_a_per_query_loop(redux):
    c = random_set(40, 5, 8, seed=7, masked=True, cliques=8)
    q = c.subset(torch.arange(1, 40, 3))

    class Metric:
        segment_metric = "nsqeuc"

    want = plain_metrics(q, c, redux)
    index, got, nrel, ncand = R.evaluate(Metric(), q, c, redux=redux, max_elements=300)
    assert torch.equal(index, torch.arange(len(q)))
    for key in want:
        assert torch.allclose(got[key], want[key], equal_nan=True), key
    assert torch.equal(ncand, torch.full((len(q),), 39))
    assert torch.equal(nrel, (c.cliques[None] == q.cliques[:, None]).sum(-1) - 1)


def test_evaluate_splits_queries_between_processes_without_overlap():
    c = random_set(30, 4, 8, seed=8, cliques=6)

    class Metric:
        segment_metric = "nsqeuc"

    index, full, _, _ = R.evaluate(Metric(), c, c, redux="bpwr-2", max_elements=200)
    parts = [
        R.evaluate(Metric(), c, c, "bpwr-2", rank=r, world=3, max_elements=200) for r in range(3)
    ]
    joined = torch.cat([p[0] for p in parts])
    assert sorted(joined.tolist()) == list(range(30))
    order = joined.argsort()
    for key in full:
        merged = torch.cat([p[1][key] for p in parts])[order]
        assert torch.equal(merged, full[key])


def test_compute_keeps_the_original_signature():
    c = random_set(20, 3, 8, seed=9, cliques=5)
    ap, r1, arp = E.compute(
        SquaredEuclidean(),
        c.cliques,
        c.ids,
        c.z,
        c.cliques,
        c.ids,
        c.z,
        c.mask,
        c.mask,
        redux_strategy="min",
        batch_size_candidates=6,
    )
    want = plain_metrics(c, c, "min")
    assert torch.allclose(ap, want["AP"]) and torch.equal(r1, want["R1"])
    assert torch.allclose(arp, want["ARP"])


def test_unknown_reduction_is_rejected_before_any_work():
    c = random_set(4, 2, 4, seed=10)
    with pytest.raises(ValueError, match="unknown segment-distance reduction"):
        R.evaluate(SquaredEuclidean(), c, c, redux="bpwx-3")


def test_embeddings_check_their_shapes():
    with pytest.raises(ValueError, match="mask"):
        R.Embeddings(torch.zeros(2), torch.zeros(2), torch.zeros(2, 3, 4), torch.zeros(2, 4).bool())
    with pytest.raises(ValueError, match=r"\(N, S, D\)"):
        R.Embeddings(torch.zeros(2), torch.zeros(2), torch.zeros(2, 3), None)


def test_bpwr_fast_path_with_a_single_query_window():
    # one query track with one window against several candidates: the permuted (P, Sq) views
    # are not contiguous (regression: the greedy matching used .view on them)
    torch.manual_seed(0)
    q = R.Embeddings(
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
        torch.randn(1, 1, 8).half(),
        None,
    )
    c = R.Embeddings(torch.arange(5), torch.arange(5), torch.randn(5, 4, 8).half(), None)
    got = R.block_distances(q, c, "bpwr-5", metric="nsqeuc")
    flat_q, flat_c = q.z.float().reshape(1, 8), c.z.float().reshape(20, 8)
    want = T.pairwise_distance_matrix(flat_q, flat_c, mode="nsqeuc").view(5, 4).amin(-1)
    assert torch.allclose(got[0], want, atol=1e-3)
