"""Tensor helpers: padding/framing, pairwise distances, masked reductions and the segment-distance
reductions that turn all segment pairs of two tracks into one track distance.

Conventions shared by every function here:
- a mask is a bool tensor where True means *excluded / invalid*;
- ``INF`` (1e12) is the finite sentinel used for "no valid value", finite on purpose so that
  ``0 * INF == 0`` inside masked arithmetic.
"""

import math

import torch

# the reduction names (the grammar) are torch-free, for the matcher (lib/reductions.py)
from lib.reductions import INF, parse_redux

PAD_MODES = ("repeat", "zeros", "crazy")
CUT_MODES = ("start", "end", "random")


###################################################################################################
# Padding and framing
###################################################################################################


def force_length(x, length, dim=-1, pad_mode="repeat", cut_mode="start", allow_longer=False):
    """Return ``x`` with exactly ``length`` elements along ``dim``.

    Shorter inputs grow by whole copies of the original along ``dim``: a copy appended ("repeat"),
    a zero block appended ("zeros"), or, per step, one of {append copy, prepend copy, append zeros,
    prepend zeros} chosen at random ("crazy"). The grown (or originally longer) tensor is then cut
    to ``length``, keeping its start, its end or a random window (``cut_mode``). With
    ``allow_longer`` an input that is already long enough is returned unchanged.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if cut_mode not in CUT_MODES:
        raise ValueError(f"cut_mode must be one of {CUT_MODES}, got {cut_mode!r}")
    length = int(length)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    dim = dim % x.ndim
    size = x.size(dim)
    if size == length or (size > length and allow_longer):
        return x
    if size == 0:
        raise ValueError(f"cannot pad an empty dimension (dim {dim} of shape {tuple(x.shape)})")
    if size < length:
        x = _grow(x, length, dim, pad_mode)
        if allow_longer:
            return x
    return _cut(x, length, dim, cut_mode)


def _grow(x, length, dim, pad_mode):
    copies = math.ceil(length / x.size(dim))
    if pad_mode == "repeat":
        reps = [1] * x.ndim
        reps[dim] = copies
        return x.repeat(*reps)
    if pad_mode == "zeros":
        zeros = torch.zeros_like(x)
        return torch.cat([x] + [zeros] * (copies - 1), dim=dim)
    # "crazy": random mixture of copies and silence on either side
    zeros = torch.zeros_like(x)
    out = x
    while out.size(dim) < length:
        choice = int(torch.randint(4, (1,)))
        block = x if choice < 2 else zeros
        out = torch.cat([out, block] if choice % 2 == 0 else [block, out], dim=dim)
    return out


def _cut(x, length, dim, cut_mode):
    size = x.size(dim)
    if cut_mode == "start":
        start = 0
    elif cut_mode == "end":
        start = size - length
    else:
        start = int(torch.randint(size - length + 1, (1,)))
    return x.narrow(dim, start, length)


def get_frames(x, length, step, dim=-1, pad_end=True, pad_mode="zeros", cut_mode="start"):
    """Sliding windows of ``length`` samples every ``step`` samples along ``dim``.

    Returns shape ``(..., S, length)`` for ``dim=-1`` with S = max(ceil((T - length) / step), 0) + 1
    when ``pad_end`` (the last window is completed with ``pad_mode``); without ``pad_end`` only
    full windows are returned.
    """
    length, step = int(length), int(step)
    if length < 1 or step < 1:
        raise ValueError(f"frame length and step must be >= 1, got length={length}, step={step}")
    dim = dim % x.ndim
    if pad_end:
        nframes = max(math.ceil((x.size(dim) - length) / step), 0) + 1
        total = (nframes - 1) * step + length
        x = force_length(x, total, dim=dim, pad_mode=pad_mode, cut_mode=cut_mode)
    elif x.size(dim) < length:
        raise ValueError(f"signal of {x.size(dim)} samples is shorter than one frame ({length})")
    return x.unfold(dim, length, step)


###################################################################################################
# Pairwise distances
###################################################################################################

DISTANCE_MODES = ("fro", "nfro", "euc", "neuc", "sqeuc", "nsqeuc", "cos", "cossim", "dot", "dotsim")


def pairwise_distance_matrix(x, y, mode="fro", p=2, eps=1e-6):
    """All distances between the rows of ``x`` (..., N, C) and ``y`` (..., M, C) -> (..., N, M).

    1-D inputs are treated as C = 1. Modes: ``fro`` p-norm distance, ``nfro`` divided by C^(1/p),
    ``euc``/``neuc`` the same with p = 2, ``sqeuc`` squared Euclidean (clamped at 0), ``nsqeuc``
    squared Euclidean / C, ``cos`` 1 - cosine similarity, ``cossim`` cosine similarity, ``dot``
    1 - dot product, ``dotsim`` dot product.
    """
    if x.ndim == 1:
        x = x.unsqueeze(-1)
    if y.ndim == 1:
        y = y.unsqueeze(-1)
    nchan = x.size(-1)
    if mode in ("euc", "neuc"):
        mode, p = mode.replace("euc", "fro"), 2
    if mode in ("fro", "nfro"):
        dist = torch.cdist(x, y, p=p)
        return dist / nchan ** (1 / p) if mode == "nfro" else dist
    if mode in ("sqeuc", "nsqeuc"):
        dist = squared_euclidean(x, y)
        return dist / nchan if mode == "nsqeuc" else dist
    if mode in ("cos", "cossim"):
        xn = x / (x.norm(dim=-1, keepdim=True) + eps)
        yn = y / (y.norm(dim=-1, keepdim=True) + eps)
        sim = xn @ yn.transpose(-1, -2)
        return sim if mode == "cossim" else 1 - sim
    if mode in ("dot", "dotsim"):
        sim = x @ y.transpose(-1, -2)
        return sim if mode == "dotsim" else 1 - sim
    raise ValueError(f"unknown distance mode {mode!r}; valid modes: {', '.join(DISTANCE_MODES)}")


def squared_euclidean(x, y):
    """||x||^2 - 2 x.y + ||y||^2 for rows of (..., N, C) and (..., M, C), clamped at 0."""
    xx = x.pow(2).sum(-1, keepdim=True)
    yy = y.pow(2).sum(-1, keepdim=True).transpose(-1, -2)
    return (xx - 2 * (x @ y.transpose(-1, -2)) + yy).clamp(min=0)


def pairwise_euclidean_distance_matrix(x, y, squared=False, eps=1e-6):
    """Euclidean distances with a square root whose gradient is finite at 0."""
    dist = squared_euclidean(x, y)
    if squared:
        return dist
    zero = dist == 0
    return (dist + zero * eps).sqrt() * (~zero)


###################################################################################################
# Masked reductions (mask True = excluded)
###################################################################################################


def _as_dims(dim):
    return (dim,) if isinstance(dim, int) else tuple(dim)


def msum(x, mask=None, dim=None, keepdim=False):
    if mask is not None:
        x = x.masked_fill(mask, 0)
    if dim is None:
        return x.sum()
    return x.sum(dim=_as_dims(dim), keepdim=keepdim)


def mmean(x, mask=None, dim=None, keepdim=False, eps=1e-7):
    """Mean over included entries; 0 where nothing is included. The mask may broadcast to x."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim=_as_dims(dim), keepdim=keepdim)
    keep = (~mask).to(x.dtype).expand_as(x)
    total = msum(x, mask.expand_as(x), dim=dim, keepdim=keepdim)
    count = keep.sum() if dim is None else keep.sum(dim=_as_dims(dim), keepdim=keepdim)
    return total / count.clamp(min=eps)


def mmin(x, mask=None, dim=None, keepdim=False, ctt=INF):
    """Minimum over included entries; ``ctt`` where nothing is included."""
    if mask is not None:
        x = x.masked_fill(mask, ctt)
    if dim is None:
        return x.min()
    return x.amin(dim=_as_dims(dim), keepdim=keepdim)


def mmax(x, mask=None, dim=None, keepdim=False, ctt=-INF):
    """Maximum over included entries; ``ctt`` where nothing is included."""
    if mask is not None:
        x = x.masked_fill(mask, ctt)
    if dim is None:
        return x.max()
    return x.amax(dim=_as_dims(dim), keepdim=keepdim)


def mrand(x, mask=None, dim=-1, keepdim=False, ctt=INF):
    """Value of one uniformly chosen included entry along ``dim``; ``ctt`` where there is none."""
    if mask is None:
        mask = torch.zeros_like(x, dtype=torch.bool)
    score = torch.rand_like(x, dtype=torch.float32).masked_fill(mask, 2.0)
    pick = score.argmin(dim=dim, keepdim=True)
    value = x.gather(dim, pick)
    none_valid = mask.all(dim=dim, keepdim=True)
    value = value.masked_fill(none_valid, ctt)
    return value if keepdim else value.squeeze(dim)


def mbest(x, k, mask=None, dim=-1, keepdim=False, ctt=INF):
    """Mean of the ``k`` smallest included entries along ``dim`` (fewer if fewer are included);
    ``ctt`` where none is included."""
    return _mean_of_extremes(x, k, mask, dim, keepdim, largest=False, ctt=ctt)


def mworst(x, k, mask=None, dim=-1, keepdim=False, ctt=INF):
    """Mean of the ``k`` largest included entries along ``dim`` (fewer if fewer are included);
    ``ctt`` where none is included."""
    return _mean_of_extremes(x, k, mask, dim, keepdim, largest=True, ctt=ctt)


def _mean_of_extremes(x, k, mask, dim, keepdim, largest, ctt):
    if mask is None:
        mask = torch.zeros_like(x, dtype=torch.bool)
    k = max(1, min(int(k), x.size(dim)))
    # invalid entries are pushed to the far end so topk only reaches them when valid ones run out
    filler = -math.inf if largest else math.inf
    values, idx = x.masked_fill(mask, filler).topk(k, dim=dim, largest=largest, sorted=False)
    invalid = mask.gather(dim, idx)
    total = values.masked_fill(invalid, 0).sum(dim=dim, keepdim=True)
    count = (~invalid).sum(dim=dim, keepdim=True)
    out = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, ctt))
    return out if keepdim else out.squeeze(dim)


def tensor_quantile(x, q, dim=-1):
    """Quantile by sorting and taking the element at round(clamp(q, 0, 1) * (n - 1))."""
    q = min(max(float(q), 0.0), 1.0)
    idx = round(q * (x.size(dim) - 1))
    return x.sort(dim=dim).values.select(dim, idx)


###################################################################################################
# Segment-distance reductions
###################################################################################################

def distance_tensor_redux(dist, redux, mask=None, squeeze=True, eps=1e-7, inf=INF):
    """Reduce segment-pair distances to one distance per (query item, candidate item).

    Args:
        dist: (B1, B2, S1, S2) distances between every query segment and candidate segment.
        redux: reduction name (see ``valid_reductions()``), e.g. "min", "bpwr-5", "smeanmin",
            or its ``Reduction`` (parsed once by a caller that reduces many blocks).
        mask: optional bool (B1, B2, S1, S2), True = invalid segment pair.
        squeeze: return (B1, B2) instead of (B1, B2, 1, 1).
        eps: scale of the uniform noise that ``bpwr`` adds to break ties.
        inf: value returned for a track pair whose segment pairs are *all* masked. It is large so
            such a pair ranks last, whatever the reduction (the original returned 0 for some).

    Reductions (over valid pairs only):
        min / max / mean: of all pairs.
        minmean: per query segment the mean over candidate segments, then the min over those.
        meanmin: per query segment the min over candidate segments, then their mean, weighted by
            the number of valid pairs of the row (a plain mean when the mask is an outer product of
            query and candidate segment validity, which is what the models produce).
        randmin: per query segment the min, then the value of one uniformly random valid row.
        bpwr[-N]: "best pairs without replacement": repeatedly take the smallest available pair
            and retire its row and column, N times (default min(S1, S2)); mean of the taken pairs.
        best[-N] / worst[-N]: mean of the N smallest / largest pairs (default N = 1).
        bestmin[-N]: per query segment the min, then the mean of the N smallest of those.
        s<name>: symmetric, the average of <name> on dist and on dist with segment axes swapped.
    """
    if dist.ndim != 4:
        raise ValueError(f"dist must be (B1, B2, S1, S2), got shape {tuple(dist.shape)}")
    if mask is not None and mask.shape != dist.shape:
        mask = mask.expand_as(dist)
    sym, base, num = parse_redux(redux)
    if sym:
        mask_t = None if mask is None else mask.transpose(2, 3)
        out = 0.5 * (
            _redux(dist, base, num, mask, eps, inf)
            + _redux(dist.transpose(2, 3), base, num, mask_t, eps, inf)
        )
    else:
        out = _redux(dist, base, num, mask, eps, inf)
    if mask is not None:
        out = out.masked_fill(mask.flatten(2).all(-1), inf)
    return out if squeeze else out[..., None, None]


def _redux(dist, base, num, mask, eps, inf):
    """One non-symmetric reduction -> (B1, B2)."""
    b1, b2, s1, s2 = dist.shape
    if mask is None:
        mask = torch.zeros_like(dist, dtype=torch.bool)
    if base == "min":
        return mmin(dist, mask, dim=(2, 3), ctt=inf)
    if base == "max":
        return mmax(dist, mask, dim=(2, 3), ctt=-inf)
    if base == "mean":
        return mmean(dist, mask, dim=(2, 3))
    if base == "minmean":
        row_valid = ~mask.all(-1)
        return mmin(mmean(dist, mask, dim=-1), ~row_valid, dim=-1, ctt=inf)
    if base == "meanmin":
        row_min = mmin(dist, mask, dim=-1, ctt=inf)
        weight = (~mask).sum(-1).to(dist.dtype)
        return (row_min * weight).sum(-1) / weight.sum(-1).clamp(min=1)
    if base == "randmin":
        row_min = mmin(dist, mask, dim=-1, ctt=inf)
        return mrand(row_min, mask.all(-1), dim=-1, ctt=inf)
    if base == "bpwr":
        return _best_pairs_without_replacement(dist, mask, num, eps, inf)
    if base == "best":
        k = 1 if num is None else num
        return mbest(dist.reshape(b1, b2, -1), k, mask.reshape(b1, b2, -1), dim=-1, ctt=inf)
    if base == "worst":
        k = 1 if num is None else num
        return mworst(dist.reshape(b1, b2, -1), k, mask.reshape(b1, b2, -1), dim=-1, ctt=inf)
    if base == "bestmin":
        k = 1 if num is None else num
        row_min = mmin(dist, mask, dim=-1, ctt=inf)
        return mbest(row_min, k, mask.all(-1), dim=-1, ctt=inf)
    raise AssertionError(base)  # parse_redux already rejected anything else


def _best_pairs_without_replacement(dist, mask, num, eps, inf):
    if dist.size(2) > dist.size(3):  # iterate over the shorter side
        dist, mask = dist.transpose(2, 3), mask.transpose(2, 3)
    s1 = dist.size(2)
    npairs = s1 if num is None else max(1, min(num, s1))
    dist = dist + eps * torch.rand_like(dist)
    available = ~mask
    selected = torch.zeros_like(mask)
    for it in range(npairs):
        best = mmin(dist, ~available, dim=(2, 3), keepdim=True, ctt=inf)
        taken = available & (dist <= best)
        selected |= taken
        if it < npairs - 1:
            # retire every row and column that contains a taken pair
            rows = taken.any(dim=3, keepdim=True)
            cols = taken.any(dim=2, keepdim=True)
            available &= ~(rows | cols)
    return mmean(dist, ~selected, dim=(2, 3))
