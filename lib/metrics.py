"""Retrieval metrics for version identification (``lib.eval`` re-exports them with the original's
``compute``).

Every metric takes the distances from one query to its candidates, ``(C,)``, or from many
queries, ``(Q, C)``, a bool ``ismatch`` of the same shape (True = relevant, i.e. same clique) and
an optional bool ``exclude`` (True = not a candidate at all: the query itself, or a duplicate of
it). Excluded candidates are removed from the ranking; they are neither relevant nor irrelevant.

Ranking is deterministic: by distance, ties broken by candidate index (stable sort).
A query without any relevant candidate gets NaN for every metric; ``aggregate`` leaves such queries
out of the means and reports how many there were.
"""

import math

import torch


def ranking(distances, ismatch, exclude=None):
    """Sort candidates and return (relevant, irrelevant) bool tensors in rank order, (..., C).

    Excluded candidates go last and count as neither relevant nor irrelevant.
    """
    distances = torch.as_tensor(distances, dtype=torch.float64)
    ismatch = torch.as_tensor(ismatch, dtype=torch.bool, device=distances.device)
    if ismatch.shape != distances.shape:
        raise ValueError(f"ismatch {tuple(ismatch.shape)} != distances {tuple(distances.shape)}")
    if exclude is None:
        exclude = torch.zeros_like(ismatch)
    else:
        exclude = torch.as_tensor(exclude, dtype=torch.bool, device=distances.device)
        exclude = exclude.expand_as(ismatch)
    # NaN distances rank last among the real candidates rather than wherever sort puts them
    distances = torch.nan_to_num(distances, nan=math.inf)
    order = torch.sort(distances, dim=-1, stable=True).indices
    # second stable pass on the exclusion flag keeps the distance order inside each group
    excluded_in_order = exclude.gather(-1, order).to(torch.uint8)
    order = order.gather(-1, torch.sort(excluded_in_order, dim=-1, stable=True).indices)
    rel = (ismatch & ~exclude).gather(-1, order)
    irr = (~ismatch & ~exclude).gather(-1, order)
    return rel, irr


def _with_nan_where_no_relevant(values, nrel):
    return torch.where(nrel > 0, values, torch.full_like(values, math.nan))


def average_precision(distances, ismatch, exclude=None):
    """Mean over relevant candidates of the precision at their rank."""
    rel, _ = ranking(distances, ismatch, exclude)
    ranks = torch.arange(1, rel.size(-1) + 1, dtype=torch.float64, device=rel.device)
    precision = rel.cumsum(-1).double() / ranks
    nrel = rel.sum(-1)
    ap = (precision * rel).sum(-1) / nrel.clamp(min=1)
    return _with_nan_where_no_relevant(ap, nrel)


def rank_of_first_correct(distances, ismatch, exclude=None):
    """1-based rank of the first relevant candidate (its mean over queries is MR1)."""
    rel, _ = ranking(distances, ismatch, exclude)
    first = rel.double().argmax(-1).double() + 1
    return _with_nan_where_no_relevant(first, rel.sum(-1))


def rank_percentile(distances, ismatch, exclude=None):
    """Average rank percentile (ARP), in %: for each relevant candidate, the fraction of all
    irrelevant candidates ranked before it, averaged over the relevant ones. 0 is perfect."""
    rel, irr = ranking(distances, ismatch, exclude)
    nrel, nirr = rel.sum(-1), irr.sum(-1)
    before = irr.cumsum(-1).double()
    frac = (before * rel).sum(-1) / (nrel * nirr).clamp(min=1)
    return _with_nan_where_no_relevant(100 * frac, nrel)


def reciprocal_rank(distances, ismatch, exclude=None):
    """1 / rank of the first relevant candidate (its mean over queries is MRR)."""
    return 1 / rank_of_first_correct(distances, ismatch, exclude)


def precision_at_k(distances, ismatch, k, exclude=None):
    """Fraction of the first ``k`` ranked candidates that are relevant."""
    rel, _ = ranking(distances, ismatch, exclude)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hits = rel[..., :k].sum(-1).double()
    return _with_nan_where_no_relevant(hits / k, rel.sum(-1))


def query_metrics(distances, ismatch, exclude=None, ks=(1, 10)):
    """Per-query AP, R1, ARP, RR and P@k as a dict of (Q,) float64 tensors (NaN = no relevant)."""
    out = {
        "AP": average_precision(distances, ismatch, exclude),
        "R1": rank_of_first_correct(distances, ismatch, exclude),
        "ARP": rank_percentile(distances, ismatch, exclude),
    }
    out["RR"] = 1 / out["R1"]
    for k in ks:
        out[f"P@{k}"] = precision_at_k(distances, ismatch, k, exclude)
    return out


def random_ranking_ap(ncandidates, nrelevant):
    """Expected AP of a query whose ``ncandidates`` candidates (``nrelevant`` of them relevant)
    are ranked uniformly at random: the chance level of MAP. The candidate at rank k is relevant
    with probability R/N, and then each of the k-1 before it with probability (R-1)/(N-1), so
    E[AP] = (1/N) sum_k (1 + (k-1)(R-1)/(N-1)) / k."""
    n, r = ncandidates, nrelevant
    if not 0 < r <= n:
        raise ValueError(f"need 0 < relevant <= candidates, got {r} of {n}")
    if n == 1:
        return 1.0
    harmonic = sum(1.0 / k for k in range(1, n + 1))
    return (harmonic + (r - 1) / (n - 1) * (n - harmonic)) / n


AGGREGATE_NAMES = {"AP": "MAP", "R1": "MR1", "ARP": "ARP", "RR": "MRR"}


def aggregate(per_query):
    """Means and 95% confidence half-widths (1.96 * unbiased std / sqrt(n)) over the queries that
    had at least one relevant candidate.

    Returns ``{name: (mean, ci)}`` with MAP, MR1, ARP, MRR, P@k, plus ``n_queries`` (evaluated)
    and ``n_no_relevant`` (left out because nothing relevant was among their candidates).
    """
    first = next(iter(per_query.values()))
    valid = ~torch.isnan(first)
    out = {}
    for key, values in per_query.items():
        values = values[valid].double()
        n = values.numel()
        mean = values.mean().item() if n > 0 else math.nan
        ci = 1.96 * values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else math.nan
        out[AGGREGATE_NAMES.get(key, key)] = (mean, ci)
    out["n_queries"] = int(valid.sum())
    out["n_no_relevant"] = int((~valid).sum())
    return out
