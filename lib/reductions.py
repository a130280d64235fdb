"""Segment-distance reductions by name (``min``, ``bpwr-10``, ``smeanmin``, ...: the grammar
every config, CLI and catalogue uses) and, in numpy, the segment distances and reductions of the
matcher (a catalogue query, a comparison), which runs without PyTorch.

``lib.tensor_ops.distance_tensor_redux`` is the PyTorch version every evaluation uses;
``distance_redux`` here gives the same values (``tests/test_reductions.py`` checks every
reduction), with two differences that only matter at exact ties: ``bpwr`` takes one pair per
step, the first of equal ones (as the evaluation engine's fast path does), instead of adding
noise of 1e-7 to break ties; ``randmin`` draws its row with numpy's generator.

Conventions: a mask is True where a segment pair is *excluded*; ``INF`` (1e12) is the finite
"no valid value" (so that ``0 * INF == 0``).
"""

import re
from typing import NamedTuple, Optional

import numpy as np

INF = 1e12

# name -> whether it accepts a "-N" suffix
REDUCTIONS = {
    "min": False,
    "max": False,
    "mean": False,
    "minmean": False,
    "meanmin": False,
    "randmin": False,
    "bpwr": True,
    "best": True,
    "worst": True,
    "bestmin": True,
}
SEGMENT_METRICS = ("cos", "sqeuc", "nsqeuc")


def valid_reductions():
    """Human-readable list of the accepted reduction names."""
    names = [n + ("[-N]" if suffix else "") for n, suffix in REDUCTIONS.items()]
    return ", ".join(names) + "; any of them with an 's' prefix for the symmetric version"


class Reduction(NamedTuple):
    """A segment-distance reduction, parsed once from its name (``str()`` gives the name back):
    ``bpwr-5`` is (False, "bpwr", 5), ``smeanmin`` (True, "meanmin", None)."""

    symmetric: bool
    base: str
    n: Optional[int]

    def __str__(self):
        suffix = "" if self.n is None else f"-{self.n}"
        return ("s" if self.symmetric else "") + self.base + suffix


def parse_redux(redux):
    """The ``Reduction`` of a name (a ``Reduction`` is returned as it is); ValueError if
    unknown."""
    if isinstance(redux, Reduction):
        return redux
    if not isinstance(redux, str):
        raise ValueError(f"reduction must be a string, got {redux!r}; valid: {valid_reductions()}")
    match = re.fullmatch(r"(s?)([a-z]+)(?:-(\d+))?", redux)
    if match is not None:
        sym, base, num = match.groups()
        if sym and base not in REDUCTIONS:
            sym, base = "", sym + base
        if base in REDUCTIONS and (num is None or REDUCTIONS[base]):
            if num is not None and int(num) < 1:
                raise ValueError(f"reduction {redux!r}: N must be >= 1")
            return Reduction(bool(sym), base, int(num) if num is not None else None)
    raise ValueError(f"unknown segment-distance reduction {redux!r}; valid: {valid_reductions()}")


###################################################################################################
# numpy: segment distances and reductions
###################################################################################################


def segment_distances(x, y, metric, eps=1e-6):
    """(N, M) float32 distances between the rows of ``x`` (N, D) and ``y`` (M, D):
    ``cos`` 1 - cosine similarity (rows divided by norm + eps), ``sqeuc`` squared Euclidean
    (clamped at 0), ``nsqeuc`` the same / D (``tensor_ops.pairwise_distance_matrix``'s)."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    # y (a block of catalogue windows) is only read: no normalised or squared copy of it
    yy = np.einsum("ij,ij->i", y, y)
    if metric == "cos":
        xn = x / (np.sqrt(np.einsum("ij,ij->i", x, x))[:, None] + eps)
        return (1 - (xn @ y.T) / (np.sqrt(yy) + eps)[None, :]).astype(np.float32)
    if metric in ("sqeuc", "nsqeuc"):
        xx = np.einsum("ij,ij->i", x, x)[:, None]
        dist = np.maximum(xx - 2 * (x @ y.T) + yy[None, :], 0)
        return (dist / x.shape[-1] if metric == "nsqeuc" else dist).astype(np.float32)
    raise ValueError(f"segment metric {metric!r}: one of {', '.join(SEGMENT_METRICS)}")


def distance_redux(dist, redux, mask=None, inf=INF, rng=None):
    """Track distances (B1, B2) from segment-pair distances ``dist`` (B1, B2, S1, S2) with the
    reduction ``redux`` (a name or ``Reduction``) over the pairs not in ``mask`` (bool, same
    shape or broadcastable, True = excluded); a track pair with no valid segment pair gets
    ``inf``. ``rng``: numpy generator of ``randmin`` (default: a fresh one)."""
    dist = np.asarray(dist, dtype=np.float64)
    if dist.ndim != 4:
        raise ValueError(f"dist must be (B1, B2, S1, S2), got shape {dist.shape}")
    mask = np.zeros(dist.shape, bool) if mask is None else np.broadcast_to(mask, dist.shape)
    sym, base, num = parse_redux(redux)
    out = _redux(dist, base, num, mask, inf, rng)
    if sym:
        swapped = _redux(dist.swapaxes(2, 3), base, num, mask.swapaxes(2, 3), inf, rng)
        out = 0.5 * (out + swapped)
    return np.where(mask.all(axis=(2, 3)), inf, out).astype(np.float32)


def _redux(dist, base, num, mask, inf, rng):
    b1, b2, s1, s2 = dist.shape
    valid = ~mask
    if base == "min":
        return np.where(mask, inf, dist).min(axis=(2, 3))
    if base == "max":
        return np.where(mask, -inf, dist).max(axis=(2, 3))
    if base == "mean":
        return _mean(dist, valid, axis=(2, 3))
    if base == "minmean":
        row_valid = valid.any(-1)
        return np.where(row_valid, _mean(dist, valid, axis=-1), inf).min(-1)
    row_min = np.where(mask, inf, dist).min(-1)  # (B1, B2, S1)
    if base == "meanmin":
        weight = valid.sum(-1)
        return (row_min * weight).sum(-1) / np.maximum(weight.sum(-1), 1)
    if base == "randmin":
        rng = rng or np.random.default_rng()
        score = np.where(valid.any(-1), rng.random(row_min.shape), 2.0)
        pick = score.argmin(-1)[..., None]
        return np.take_along_axis(row_min, pick, -1)[..., 0]
    k = 1 if num is None else num
    if base == "best":
        return _mean_of_extremes(dist.reshape(b1, b2, -1), valid.reshape(b1, b2, -1), k, inf)
    if base == "worst":
        flat, ok = -dist.reshape(b1, b2, -1), valid.reshape(b1, b2, -1)
        return -_mean_of_extremes(flat, ok, k, -inf)
    if base == "bestmin":
        return _mean_of_extremes(row_min, valid.any(-1), k, inf)
    if base == "bpwr":
        return _best_pairs_without_replacement(dist, valid, num, inf)
    raise AssertionError(base)  # parse_redux already refused anything else


def _mean(x, valid, axis, eps=1e-7):
    total = np.where(valid, x, 0).sum(axis=axis)
    return total / np.maximum(valid.sum(axis=axis), eps)


def _mean_of_extremes(x, valid, k, none):
    """Mean of the ``k`` smallest valid values along the last axis (fewer when fewer are
    valid); ``none`` where none is."""
    k = max(1, min(int(k), x.shape[-1]))
    ordered = np.sort(np.where(valid, x, np.inf), axis=-1)[..., :k]
    taken = np.isfinite(ordered)
    count = taken.sum(-1)
    total = np.where(taken, ordered, 0).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), none)


def _best_pairs_without_replacement(dist, valid, num, inf):
    """Repeatedly the smallest available pair, its row and column then retired; N times
    (default: the shorter side); the mean of the pairs taken."""
    b1, b2, s1, s2 = dist.shape
    steps = min(s1, s2) if num is None else max(1, min(num, s1, s2))
    left = np.where(valid, dist, np.inf).reshape(b1 * b2, s1, s2)
    total = np.zeros(b1 * b2)
    count = np.zeros(b1 * b2)
    pairs = np.arange(b1 * b2)
    for _ in range(steps):
        flat = left.reshape(b1 * b2, -1).argmin(-1)
        row, col = np.divmod(flat, s2)
        value = left[pairs, row, col]
        ok = np.isfinite(value)
        if not ok.any():
            break
        total += np.where(ok, value, 0)
        count += ok
        left[pairs, row, :] = np.inf
        left[pairs, :, col] = np.inf
    out = np.where(count > 0, total / np.maximum(count, 1), inf)
    return out.reshape(b1, b2)


def track_scores(query, z, mask, redux, metric):
    """Track distances (C,) float32 from one clip's windows ``query`` (Sq, D) to C catalogue
    tracks' windows ``z`` (C, S, D) (``mask`` (C, S) True at padding) with ``redux``; the clip
    is rounded to float16 as catalogue windows are. ``retrieval.track_scores`` is the PyTorch
    version (what the torch backend uses, ``runtime.WindowModel.track_scores``)."""
    q = np.asarray(query, dtype=np.float16).astype(np.float32)
    mask = np.asarray(mask)
    width = max(1, int(np.nonzero((~mask).any(0))[0].max(initial=-1)) + 1)  # windows in use
    z = np.asarray(z[:, :width], dtype=np.float32)
    mask = mask[:, :width]
    count, windows, dim = z.shape
    seg = segment_distances(q, z.reshape(count * windows, dim), metric)
    seg = seg.reshape(len(q), count, windows).transpose(1, 0, 2)[None]  # (1, C, Sq, S)
    return distance_redux(seg, redux, mask[None, :, None, :])[0]
