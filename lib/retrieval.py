"""Retrieval engine: track distances and per-query metrics for many queries against a catalogue
of segment embeddings, in blocks whose memory is bounded.

Queries and candidates are (N, S, D) segment embeddings (stored fp16) with (N, S) bool masks
(True = padding window, not part of the track). A block of ``bq`` queries is compared with a
chunk of ``bc`` candidates at a time: all their segment products come from one matrix product
(bq * Sq, D) x (D, bc * Sc), and the block's (bq, C) track distances are reduced to metrics
before the next block starts, so memory is O(max_elements + bq * C) whatever Q and C are.

Reductions:
- ``min``, ``meanmin`` and ``bpwr[-N]`` have fast paths working from the row minima of the
  block (one pass over it) and, for ``bpwr``, a greedy matching that only revisits the rows
  whose best column was taken. They give the values of ``tensor_ops.distance_tensor_redux``
  (up to its 1e-7 tie-breaking noise, which the engine replaces by a deterministic choice).
- every other reduction builds the block's (bq, bc, Sq, Sc) distances and calls
  ``distance_tensor_redux`` itself, so it is the definition by construction.

Segment distances come from matrix products with the model's ``segment_metric`` ("sqeuc",
"nsqeuc" or "cos", the metrics every model declares).
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from lib import metrics
from lib import tensor_ops
from lib.schema import DEFAULT_MAX_ELEMENTS

FAST_REDUCTIONS = ("min", "meanmin", "bpwr")


@dataclass
class Embeddings:
    """A set of tracks: clique ids (N,), song ids (N,), segment embeddings (N, S, D) and a
    padding mask (N, S) (True = not a window of the track)."""

    cliques: torch.Tensor
    ids: torch.Tensor
    z: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        n = self.z.size(0)
        if self.z.ndim != 3:
            raise ValueError(f"embeddings must be (N, S, D), got shape {tuple(self.z.shape)}")
        if self.mask is None:
            self.mask = torch.zeros(self.z.shape[:2], dtype=torch.bool, device=self.z.device)
        if self.mask.shape != self.z.shape[:2]:
            raise ValueError(f"mask {tuple(self.mask.shape)} != embeddings {tuple(self.z.shape)}")
        if self.cliques.shape != (n,) or self.ids.shape != (n,):
            raise ValueError(f"cliques/ids must be ({n},) like the embeddings")

    def __len__(self):
        return self.z.size(0)

    def trimmed(self):
        """The same tracks without the trailing windows that are padding in every track. Exact
        for every reduction: a padding window never takes part, and the default N of bpwr /
        best stays >= the number of valid windows of any pair."""
        valid = (~self.mask).any(0).nonzero()
        keep = int(valid.max()) + 1 if valid.numel() else 1
        if keep == self.z.size(1):
            return self
        return Embeddings(self.cliques, self.ids, self.z[:, :keep], self.mask[:, :keep])

    def without_windows(self, left_out):
        """The same tracks with the windows ``left_out`` (N, S) bool masked as padding too, and
        bool (N,) of the tracks that keep a window (a track without one cannot be compared)."""
        mask = self.mask | left_out.to(self.mask.device)
        return Embeddings(self.cliques, self.ids, self.z, mask), ~mask.all(1).cpu()

    def subset(self, index):
        """The tracks at ``index`` (a slice, or indices / a bool mask on the CPU)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index)
        return Embeddings(self.cliques[index], self.ids[index], self.z[index], self.mask[index])


###################################################################################################
# Block sizes
###################################################################################################


def block_sizes(sq, sc, nq, nc, max_elements=DEFAULT_MAX_ELEMENTS):
    """(queries per block, candidates per chunk) with bq * bc * sq * sc <= max_elements.

    Depends only on the shapes, never on the number of processes, so a query gets exactly the
    same arithmetic whichever process evaluates it."""
    pairs = max(1, max_elements // max(1, sq * sc))
    bq = max(1, min(nq, 32, pairs))
    bc = max(1, min(nc, pairs // bq))
    return bq, bc


###################################################################################################
# Distances of one block
###################################################################################################


def _products(q, c, bias, alpha):
    """bias_j + alpha * q_i . c_j for rows of q (M, D) and c (N, D) -> (M, N) float32.

    On a GPU the product runs in half precision with float32 output where the build allows it."""
    if q.device.type == "cuda":
        half = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float16
        qh, ch = q.to(half), c.to(half)
        try:
            g = torch.mm(qh, ch.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            g = (qh @ ch.T).float()
        return g.mul_(alpha).add_(bias)
    return torch.addmm(bias[None, :], q, c.T, alpha=alpha)


# segment distance = term(q) + term(c) + alpha * q.c, then clamped at floor and scaled
ALPHA = {"sqeuc": -2.0, "nsqeuc": -2.0, "cos": -1.0}
FLOOR = {"sqeuc": 0.0, "nsqeuc": 0.0, "cos": -math.inf}


def _segment_terms(z, metric, mask=None):
    """Segments of z (N, S, D) as float32 rows (N * S, D) and their terms (N * S,): squared norms
    (squared Euclidean) or 1/2 (cosine, rows normalised as in ``pairwise_distance_matrix``);
    +inf where masked, so masked segments never win a minimum."""
    v = z.reshape(-1, z.size(-1)).float()
    if metric == "cos":
        v = v / (v.norm(dim=-1, keepdim=True) + 1e-6)
        term = torch.full((v.size(0),), 0.5, device=v.device)
    else:
        term = v.pow(2).sum(-1)
    if mask is not None:
        term = term.masked_fill(mask.reshape(-1), math.inf)
    return v, term


def _scale(metric, dim):
    return 1.0 / dim if metric == "nsqeuc" else 1.0


def block_distances(q, c, redux, metric="nsqeuc", inf=tensor_ops.INF):
    """Track distances (bq, bc) between query tracks ``q`` and candidate tracks ``c``
    (``Embeddings`` on the compute device) with segment distances ``metric``, reduced by
    ``redux`` (a name or its ``reductions.Reduction``). A pair with no valid segment pair gets
    ``inf``."""
    redux = tensor_ops.parse_redux(redux)
    if not redux.symmetric and redux.base in FAST_REDUCTIONS:
        return _fast_block(q, c, redux.base, redux.n, metric, inf)
    return _generic_block(q, c, redux, metric, inf)


def _generic_block(q, c, redux, metric, inf):
    bq, sq, dim = q.z.shape
    bc, sc, _ = c.z.shape
    qv, qterm = _segment_terms(q.z, metric)
    cv, cterm = _segment_terms(c.z, metric)
    x = _products(qv, cv, cterm, ALPHA[metric])
    dist = (x + qterm[:, None]).clamp_(min=FLOOR[metric]).mul_(_scale(metric, dim))
    dist = dist.view(bq, sq, bc, sc).permute(0, 2, 1, 3)
    mask = q.mask[:, None, :, None] | c.mask[None, :, None, :]
    return tensor_ops.distance_tensor_redux(dist, redux, mask=mask, inf=inf).float()


def _fast_block(q, c, base, num, metric, inf):
    bq, sq, dim = q.z.shape
    bc, sc, _ = c.z.shape
    floor = FLOOR[metric]
    qv, qq = _segment_terms(q.z, metric, q.mask)
    cv, cterm = _segment_terms(c.z, metric, c.mask)
    x = _products(qv, cv, cterm, ALPHA[metric]).view(bq, sq, bc, sc)
    qq = qq.view(bq, sq)
    if base == "bpwr":
        rowval, rowcol = x.min(-1)
        cols = rowcol.permute(0, 2, 1).reshape(bq * bc, sq)
    else:
        rowval = x.amin(-1)
    # per pair, the best value of each query row: (P, Sq) with P = bq * bc
    heads = (rowval + qq[:, :, None]).permute(0, 2, 1).reshape(bq * bc, sq)
    if base == "min":
        out = heads.amin(-1)
    elif base == "meanmin":
        valid = torch.isfinite(heads)
        total = heads.clamp(min=floor).masked_fill(~valid, 0).sum(-1)
        out = total / valid.sum(-1).clamp(min=1)
        out = out.masked_fill(~valid.any(-1), math.inf)
    else:
        out = _greedy_pairs(x, qq, heads, cols, num, floor)
    finite = torch.isfinite(out)
    out = torch.where(finite, out.clamp(min=floor) * _scale(metric, dim), torch.full_like(out, inf))
    return out.view(bq, bc)


def _greedy_pairs(x, qq, heads, cols, num, floor=0.0):
    """Best pairs without replacement, from the row heads.

    x: (bq, Sq, bc, Sc) block of ||c||^2 - 2 q.c (+inf at masked candidate segments); qq: (bq,
    Sq) query norms (+inf if masked); heads / cols: (P, Sq) the best value of each row of each
    pair and its column (P = bq * bc, pair p = query p // bc, candidate p % bc). Each step takes
    the smallest head of every pair, retires its row and its column, and recomputes only the
    rows whose best column was retired. Returns the mean of the taken values (P,), +inf for a
    pair without any valid segment pair.
    """
    bq, sq, bc, sc = x.shape
    npairs = bq * bc
    steps = min(sq, sc) if num is None else max(1, min(num, sq, sc))
    device = heads.device
    rows2d = x.reshape(-1, sc)  # row (qi * Sq + r) * bc + ci
    pair = torch.arange(npairs, device=device)
    pair_q, pair_c = pair // bc, pair % bc
    # flat row index in rows2d of (pair, r), and the pair's query norms: (P * Sq,)
    row_index = (pair_q[:, None] * sq + torch.arange(sq, device=device)) * bc + pair_c[:, None]
    row_index = row_index.reshape(-1)
    qq_flat = qq.index_select(0, pair_q).reshape(-1)
    heads = heads.clone(memory_format=torch.contiguous_format)
    cols = cols.clone(memory_format=torch.contiguous_format)
    heads_flat, cols_flat = heads.view(-1), cols.view(-1)
    retired = torch.zeros(npairs, sc, dtype=torch.bool, device=device)
    total = torch.zeros(npairs, dtype=heads.dtype, device=device)
    count = torch.zeros(npairs, dtype=heads.dtype, device=device)
    for step in range(steps):
        value, row = heads.min(-1)
        ok = torch.isfinite(value)
        if not bool(ok.any()):
            break
        total += torch.where(ok, value.clamp(min=floor), torch.zeros_like(value))
        count += ok.to(count.dtype)
        if step == steps - 1:
            break
        col = cols.gather(1, row[:, None])
        heads.scatter_(1, row[:, None], math.inf)
        retired.scatter_(1, col, True)  # pairs without a finite head are never revisited
        stale = (cols == col) & torch.isfinite(heads)
        flat = stale.view(-1).nonzero().squeeze(1)
        if flat.numel():
            redo = rows2d.index_select(0, row_index.index_select(0, flat))
            redo.masked_fill_(retired.index_select(0, flat // sq), math.inf)
            best, where = redo.min(-1)
            heads_flat.index_copy_(0, flat, best + qq_flat.index_select(0, flat))
            cols_flat.index_copy_(0, flat, where)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.inf))


def track_scores(query, z, mask, redux, metric):
    """Track distances (C,) float32 from one clip's windows ``query`` (Sq, D) numpy to C
    catalogue tracks' windows ``z`` (C, S, D) numpy fp16 (``mask`` (C, S) True at padding) with
    ``redux``: ``reductions.track_scores`` by this engine (the torch backend's)."""
    q = torch.from_numpy(np.asarray(query, dtype=np.float16))[None]
    none = torch.zeros(1, dtype=torch.long)
    ids = torch.arange(len(z))
    with warnings.catch_warnings():
        # slices of a read-only memory map are only read here: no copy needed
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        zt = torch.from_numpy(np.ascontiguousarray(z))
    candidates = Embeddings(ids, ids, zt, torch.from_numpy(np.ascontiguousarray(mask)))
    clip = Embeddings(none, none, q, None)
    return block_distances(clip, candidates.trimmed(), redux, metric)[0].numpy()


###################################################################################################
# Many queries against a catalogue
###################################################################################################


def query_block_distances(model, queries, candidates, redux, device, bc, inf=tensor_ops.INF):
    """Distances (bq, C) from a block of queries to every candidate, candidates in chunks of
    ``bc``, with the model's ``segment_metric``."""
    q = _to(queries, device)
    out = torch.empty(len(queries), len(candidates), dtype=torch.float32)
    for c0 in range(0, len(candidates), bc):
        c = _to(candidates.subset(slice(c0, c0 + bc)), device)
        dist = block_distances(q, c, redux, metric=model.segment_metric, inf=inf)
        out[:, c0 : c0 + bc] = dist.cpu()
    return out


def _to(emb, device):
    return Embeddings(
        emb.cliques, emb.ids, emb.z.to(device, non_blocking=True), emb.mask.to(device)
    )


def _resident(emb, device):
    """On a GPU, the candidate set moves there once when it takes at most half of the free
    memory (otherwise every query block streams it chunk by chunk)."""
    if device.type != "cuda" or emb.z.device == device:
        return emb
    free, _ = torch.cuda.mem_get_info(device)
    if emb.z.numel() * 2 > free // 2:
        return emb
    return Embeddings(emb.cliques, emb.ids, emb.z.to(device, torch.float16), emb.mask.to(device))


def default_redux(model):
    """The model's own reduction for evaluation (for CLEWS its positive-pair training
    reduction)."""
    return model.default_redux


def query_blocks(nq, bq, rank=0, world=1):
    """Slices of the queries this process evaluates: fixed blocks dealt round-robin."""
    starts = range(0, nq, bq)
    return [slice(s, min(s + bq, nq)) for i, s in enumerate(starts) if i % world == rank]


@torch.inference_mode()
def evaluate(
    model,
    queries,
    candidates,
    redux=None,
    device="cpu",
    rank=0,
    world=1,
    max_elements=DEFAULT_MAX_ELEMENTS,
    ks=(1, 10),
    max_candidates=None,
    progress=None,
):
    """Per-query metrics of this process's share of the queries.

    Relevant = same clique; a candidate with the query's song id is excluded (neither relevant
    nor irrelevant). Returns (query indices (n,), {metric: (n,) float64}, n relevant (n,), n
    candidates (n,)); ``lib.metrics.aggregate`` turns the metrics into means and intervals.
    """
    # parsed once: every block gets the Reduction value
    redux = tensor_ops.parse_redux(default_redux(model) if redux is None else redux)
    device = torch.device(device)
    queries, candidates = queries.trimmed(), candidates.trimmed()
    nq, sq = queries.z.shape[:2]
    nc, sc = candidates.z.shape[:2]
    bq, bc = block_sizes(sq, sc, nq, nc, max_elements)
    if max_candidates is not None:
        bc = max(1, min(bc, max_candidates))
    candidates = _resident(candidates, device)
    index, results, nrel, ncand = [], [], [], []
    blocks = query_blocks(nq, bq, rank, world)
    for block in blocks if progress is None else progress(blocks):
        qblock = queries.subset(block)
        dist = query_block_distances(model, qblock, candidates, redux, device, bc)
        ismatch = qblock.cliques[:, None] == candidates.cliques[None, :]
        exclude = qblock.ids[:, None] == candidates.ids[None, :]
        results.append(metrics.query_metrics(dist, ismatch, exclude, ks=ks))
        nrel.append((ismatch & ~exclude).sum(-1))
        ncand.append((~exclude).sum(-1))
        index.append(torch.arange(block.start, block.stop))
    if not results:
        empty = torch.zeros(0, dtype=torch.float64)
        keys = ["AP", "R1", "ARP", "RR"] + [f"P@{k}" for k in ks]
        none = torch.zeros(0, dtype=torch.long)
        return none, {k: empty for k in keys}, none, none
    per_query = {k: torch.cat([r[k] for r in results]) for k in results[0]}
    return torch.cat(index), per_query, torch.cat(nrel), torch.cat(ncand)
