import math

import pytest
import torch

from lib import eval as E

GOLDEN_D = [0.2, 0.5, 0.1, 0.9, 0.3]
GOLDEN_REL = [False, True, False, True, True]


def test_golden_example():
    assert E.average_precision(GOLDEN_D, GOLDEN_REL).item() == pytest.approx(0.477778, abs=1e-6)
    assert E.rank_of_first_correct(GOLDEN_D, GOLDEN_REL).item() == 3
    assert E.rank_percentile(GOLDEN_D, GOLDEN_REL).item() == pytest.approx(100.0)
    assert E.reciprocal_rank(GOLDEN_D, GOLDEN_REL).item() == pytest.approx(1 / 3)
    assert E.precision_at_k(GOLDEN_D, GOLDEN_REL, 1).item() == 0
    assert E.precision_at_k(GOLDEN_D, GOLDEN_REL, 3).item() == pytest.approx(1 / 3)


def test_excluded_query_is_not_an_irrelevant_item():
    # the query itself sits at distance 0; the original counted it as irrelevant (ARP 75, not 100)
    d = GOLDEN_D + [0.0]
    rel = GOLDEN_REL + [False]
    exclude = [False] * 5 + [True]
    assert E.rank_percentile(d, rel, exclude).item() == pytest.approx(100.0)
    assert E.average_precision(d, rel, exclude).item() == pytest.approx(0.477778, abs=1e-6)
    assert E.rank_of_first_correct(d, rel, exclude).item() == 3
    # without excluding it, it is a genuine irrelevant candidate ranked first
    assert E.rank_of_first_correct(d, rel).item() == 4


def test_ties_are_broken_by_candidate_index():
    d = torch.zeros(6)
    rel = torch.tensor([False, False, True, False, True, False])
    assert E.rank_of_first_correct(d, rel).item() == 3
    assert E.average_precision(d, rel).item() == pytest.approx((1 / 3 + 2 / 5) / 2)
    # reversing the candidate order changes the result deterministically (index decides ties)
    assert E.rank_of_first_correct(d, rel.flip(0)).item() == 2


def test_query_without_relevant_candidate_is_counted_not_crashing():
    d = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    rel = torch.tensor([[False, True, False], [False, False, False]])
    per_query = E.query_metrics(d, rel)
    assert per_query["AP"][0].item() == 0.5 and math.isnan(per_query["AP"][1].item())
    summary = E.aggregate(per_query)
    assert summary["n_queries"] == 1 and summary["n_no_relevant"] == 1
    assert summary["MAP"][0] == 0.5 and summary["MR1"][0] == 2


def _plain_metrics(d, rel):
    order = sorted(range(len(d)), key=lambda i: (d[i], i))
    r = [rel[i] for i in order]
    hits, precisions = 0, []
    for k, x in enumerate(r, 1):
        if x:
            hits += 1
            precisions.append(hits / k)
    nirr = len(r) - sum(r)
    arp, irr_before = [], 0
    for x in r:
        if x:
            arp.append(irr_before / nirr if nirr else 0.0)
        else:
            irr_before += 1
    return sum(precisions) / len(precisions), r.index(True) + 1, 100 * sum(arp) / len(arp)


def test_batch_metrics_match_plain_loop():
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(20, 50, generator=gen).round(decimals=1)  # rounding creates many ties
    rel = torch.rand(20, 50, generator=gen) < 0.2
    rel[:, 0] = True
    per_query = E.query_metrics(d, rel, ks=(1, 5))
    for q in range(20):
        ap, r1, arp = _plain_metrics(d[q].tolist(), rel[q].tolist())
        assert per_query["AP"][q].item() == pytest.approx(ap)
        assert per_query["R1"][q].item() == r1
        assert per_query["ARP"][q].item() == pytest.approx(arp)
        order = sorted(range(50), key=lambda i: (d[q, i].item(), i))
        assert per_query["P@5"][q].item() == pytest.approx(sum(rel[q, order[:5]].tolist()) / 5)


def test_aggregate_confidence_interval():
    per_query = {"AP": torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)}
    mean, ci = E.aggregate(per_query)["MAP"]
    std = math.sqrt(sum((v - 0.5) ** 2 for v in [0.2, 0.4, 0.6, 0.8]) / 3)
    assert mean == pytest.approx(0.5) and ci == pytest.approx(1.96 * std / 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="ismatch"):
        E.average_precision([0.1, 0.2], [True])


class _EuclideanModel:
    """What the engine reads of a model: squared Euclidean / D segment distances, ``min``."""

    segment_metric = "nsqeuc"
    default_redux = "min"


def test_compute_matches_per_query_metrics_in_chunks():
    gen = torch.Generator().manual_seed(0)
    cliques = torch.arange(30) // 3
    ids = torch.arange(30)
    z = torch.randn(30, 2, 8, generator=gen) + cliques.view(-1, 1, 1).float() * 0.5
    ap, r1, arp = E.compute(
        _EuclideanModel(), cliques, ids, z, cliques, ids, z, batch_size_candidates=7
    )
    # every segment pair's mean squared difference, the closest pair per track pair
    dist = ((z[:, None, :, None] - z[None, :, None, :]) ** 2).mean(-1).amin(dim=(-2, -1))
    want = E.query_metrics(dist, cliques[:, None] == cliques[None], ids[:, None] == ids[None])
    torch.testing.assert_close(ap, want["AP"])
    torch.testing.assert_close(r1, want["R1"])
    torch.testing.assert_close(arp, want["ARP"])
    assert ap.shape == (30,) and not torch.isnan(ap).any()


@pytest.mark.parametrize("ncandidates,nrelevant", [(1, 1), (4, 1), (5, 2), (6, 3), (6, 6)])
def test_random_ranking_ap_is_the_mean_ap_over_every_ranking(ncandidates, nrelevant):
    import itertools

    ismatch = torch.tensor([True] * nrelevant + [False] * (ncandidates - nrelevant))
    orders = torch.tensor(list(itertools.permutations(range(ncandidates))), dtype=torch.float64)
    aps = E.average_precision(orders, ismatch.expand(len(orders), -1))
    assert E.random_ranking_ap(ncandidates, nrelevant) == pytest.approx(aps.mean().item(), abs=1e-12)


def test_random_ranking_ap_of_the_paper_benchmark_test_set():
    # 40 works x 4 versions: each query has 3 relevant among 159 candidates, about 0.048
    assert E.random_ranking_ap(159, 3) == pytest.approx(0.0478, abs=5e-4)
    with pytest.raises(ValueError, match="0 of 5"):
        E.random_ranking_ap(5, 0)
