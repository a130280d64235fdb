"""Evaluation API of the original code: the retrieval metrics (``lib.metrics``, re-exported here
under the names users know) and ``compute``, the original's entry point to the engine
(``lib.retrieval``). The metrics themselves import nothing of the engine, so the layers point
one way: this module -> retrieval -> metrics.
"""

import torch

from lib import retrieval
from lib.metrics import (  # noqa: F401  (the public names of lib.eval)
    AGGREGATE_NAMES,
    aggregate,
    average_precision,
    precision_at_k,
    query_metrics,
    random_ranking_ap,
    rank_of_first_correct,
    rank_percentile,
    ranking,
    reciprocal_rank,
)


@torch.inference_mode()
def compute(
    model,
    queries_c,
    queries_i,
    queries_z,
    candidates_c,
    candidates_i,
    candidates_z,
    queries_m=None,
    candidates_m=None,
    redux_strategy=None,
    batch_size_candidates=None,
):
    """Per-query AP, rank of the first relevant candidate and ARP (the original's entry point),
    computed by the retrieval engine (``lib.retrieval``).

    Args:
        model: a model of ``models/`` (a ``lib.model_base.SegmentModel``: its
            ``segment_metric`` and ``default_redux`` are used).
        queries_c / candidates_c: clique ids (Q,) / (C,); relevant = same clique.
        queries_i / candidates_i: song ids; a candidate with the query's song id is excluded.
        queries_z / candidates_z: segment embeddings (Q, Sq, D) / (C, Sc, D), on the device
            where the distances are computed.
        queries_m / candidates_m: optional bool masks (Q, Sq) / (C, Sc), True = invalid segment.
        redux_strategy: segment-distance reduction (None = the model's default).
        batch_size_candidates: most candidates per block (default: bounded by memory).

    Returns (AP, R1, ARP) float64 tensors of shape (Q,); NaN for a query with no relevant one.
    """
    # the engine only reads the model's segment metric and reduction: it runs no layer, so the
    # model's train / eval mode is left as it is
    queries = retrieval.Embeddings(queries_c.cpu(), queries_i.cpu(), queries_z, queries_m)
    candidates = retrieval.Embeddings(
        candidates_c.cpu(), candidates_i.cpu(), candidates_z, candidates_m
    )
    _, per_query, _, _ = retrieval.evaluate(
        model,
        queries,
        candidates,
        redux=redux_strategy,
        device=queries_z.device,
        ks=(),
        max_candidates=batch_size_candidates,
    )
    return per_query["AP"], per_query["R1"], per_query["ARP"]
