import itertools
import math

import pytest
import torch

from lib import reductions
from lib import tensor_ops as T
from lib.tensor_ops import INF, distance_tensor_redux, force_length, get_frames

# --------------------------------------------------------------------------------------------------
# force_length
# --------------------------------------------------------------------------------------------------


def test_force_length_repeat_and_zeros_examples():
    x = torch.arange(5)
    assert force_length(x, 12, pad_mode="repeat").tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert force_length(x, 12, pad_mode="zeros").tolist() == [0, 1, 2, 3, 4] + [0] * 7
    assert force_length(torch.arange(12), 5, cut_mode="end").tolist() == [7, 8, 9, 10, 11]
    assert force_length(torch.arange(12), 5, cut_mode="start").tolist() == [0, 1, 2, 3, 4]


def test_force_length_along_inner_dim():
    # the original checked the last dim when cutting: (1,3,4) padded to 5 on dim 1 gave (1,6,4)
    x = torch.randn(1, 3, 4)
    y = force_length(x, 5, dim=1, pad_mode="zeros")
    assert y.shape == (1, 5, 4)
    assert torch.equal(y[:, :3], x) and torch.all(y[:, 3:] == 0)
    y = force_length(x, 2, dim=1, cut_mode="end")
    assert torch.equal(y, x[:, 1:])
    y = force_length(torch.randn(7, 3), 10, dim=0, pad_mode="repeat")
    assert y.shape == (10, 3)


def test_force_length_random_cut_is_a_window_and_allow_longer():
    x = torch.arange(100)
    for _ in range(20):
        y = force_length(x, 10, cut_mode="random")
        assert y.tolist() == list(range(int(y[0]), int(y[0]) + 10))
    assert force_length(x, 10, allow_longer=True) is x
    # growing with allow_longer keeps whole copies
    assert force_length(torch.arange(4), 6, allow_longer=True).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_force_length_crazy_is_made_of_copies_and_zeros():
    torch.manual_seed(0)
    x = torch.arange(1, 4)
    for _ in range(10):
        y = force_length(x, 12, pad_mode="crazy")
        assert y.shape == (12,)
        blocks = y.view(4, 3).tolist()
        assert all(b in ([1, 2, 3], [0, 0, 0]) for b in blocks)
        assert [1, 2, 3] in blocks


def test_force_length_rejects_bad_modes():
    with pytest.raises(ValueError, match="pad_mode"):
        force_length(torch.ones(3), 5, pad_mode="reflect")
    with pytest.raises(ValueError, match="cut_mode"):
        force_length(torch.ones(3), 2, cut_mode="middle")


# --------------------------------------------------------------------------------------------------
# get_frames
# --------------------------------------------------------------------------------------------------


def test_get_frames_counts_and_padding():
    x = torch.arange(1, 31).float()
    frames = get_frames(x, 10, 7, pad_mode="zeros")
    assert frames.shape == (4, 10)
    assert frames[3].tolist() == list(range(22, 31)) + [0]
    frames = get_frames(x, 10, 7, pad_mode="repeat")
    assert frames[3].tolist() == list(range(22, 31)) + [1]  # wraps to the start of the signal
    frames = get_frames(x, 40, 7, pad_mode="repeat")
    assert frames.shape == (1, 40) and frames[0, 30:].tolist() == list(range(1, 11))
    batch = get_frames(torch.randn(3, 30), 10, 10)
    assert batch.shape == (3, 3, 10)
    for size, length, hop in [(100, 20, 20), (150, 20, 10), (33, 5, 4)]:
        n = get_frames(torch.zeros(size), length, hop).shape[0]
        assert n == max(math.ceil((size - length) / hop), 0) + 1


# --------------------------------------------------------------------------------------------------
# pairwise distances
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", T.DISTANCE_MODES)
def test_pairwise_distance_matrix_modes_match_definitions(mode):
    torch.manual_seed(1)
    x, y = torch.randn(5, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    got = T.pairwise_distance_matrix(x, y, mode=mode, p=3 if "fro" in mode else 2)
    c = x.size(1)
    for i, j in itertools.product(range(5), range(6)):
        a, b = x[i], y[j]
        cos = (a / (a.norm() + 1e-6)) @ (b / (b.norm() + 1e-6))
        want = {
            "fro": (a - b).abs().pow(3).sum() ** (1 / 3),
            "nfro": (a - b).abs().pow(3).sum() ** (1 / 3) / c ** (1 / 3),
            "euc": (a - b).norm(),
            "neuc": (a - b).norm() / c**0.5,
            "sqeuc": (a - b).pow(2).sum(),
            "nsqeuc": (a - b).pow(2).sum() / c,
            "cos": 1 - cos,
            "cossim": cos,
            "dot": 1 - a @ b,
            "dotsim": a @ b,
        }[mode]
        assert got[i, j].item() == pytest.approx(want.item(), rel=1e-9, abs=1e-9)


def test_pairwise_distance_unknown_mode_and_zero_safe_sqrt():
    with pytest.raises(ValueError, match="valid modes"):
        T.pairwise_distance_matrix(torch.ones(2, 2), torch.ones(2, 2), mode="manhattan")
    x = torch.randn(4, 3, requires_grad=True)
    d = T.pairwise_euclidean_distance_matrix(x, x)
    d.sum().backward()
    assert torch.all(torch.isfinite(x.grad)) and torch.all(d.diagonal() == 0)


# --------------------------------------------------------------------------------------------------
# masked reductions
# --------------------------------------------------------------------------------------------------


def test_masked_reductions():
    INF = torch.tensor(T.INF).item()  # the sentinel as float32 represents it
    x = torch.tensor([[4.0, 1.0, 3.0, 2.0], [5.0, 6.0, 7.0, 8.0]])
    m = torch.tensor([[False, True, False, False], [True, True, True, True]])
    assert T.mmean(x, m, dim=-1).tolist() == [3.0, 0.0]
    assert T.mmin(x, m, dim=-1).tolist() == [2.0, INF]
    assert T.mmax(x, m, dim=-1).tolist() == [4.0, -INF]
    assert T.mbest(x, 2, m, dim=-1).tolist() == [2.5, INF]
    assert T.mworst(x, 2, m, dim=-1).tolist() == [3.5, INF]
    assert T.mworst(x, 10, m, dim=-1).tolist() == [3.0, INF]  # fewer valid than k
    for _ in range(20):
        assert T.mrand(x, m, dim=-1)[0].item() in (4.0, 3.0, 2.0)
    assert T.mrand(x, m, dim=-1)[1].item() == INF
    assert T.tensor_quantile(torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0]), 0.5).item() == 3.0


# --------------------------------------------------------------------------------------------------
# distance_tensor_redux: the original's values for a fixed distance matrix
# --------------------------------------------------------------------------------------------------

D = torch.tensor([[0.5, 0.8, 0.1, 0.2], [0.3, 0.6, 0.5, 0.9], [0.4, 0.7, 0.35, 0.45]])[None, None]
M = torch.zeros_like(D, dtype=torch.bool)
M[..., 2, :] = True  # query segment 3 invalid
M[..., :, 3] = True  # candidate segment 4 invalid

# With the mask, the valid block is [[0.5, 0.8, 0.1], [0.3, 0.6, 0.5]].
GOLDEN = {
    "min": (0.1, 0.1),
    "max": (0.9, 0.8),
    "mean": (0.483333, 0.466667),
    "minmean": (0.4, 0.466667),
    "meanmin": (0.25, 0.2),
    "bpwr-1": (0.1, 0.1),
    "bpwr-2": (0.2, 0.2),
    "bpwr": (0.283333, 0.2),
    "best-1": (0.1, 0.1),
    "best-3": (0.2, 0.3),
    "best-20": (0.483333, 0.466667),
    "smeanmin": (0.275, 0.266667),
    "sminmean": (0.358333, 0.383333),
    # fixed rows, recomputed by hand (the original returned 0 for worst-2 and best-2 for bestmin-2):
    # worst-2: two largest = 0.9, 0.8 -> 0.85; masked: 0.8, 0.6 -> 0.7
    "worst-2": ((0.9 + 0.8) / 2, (0.8 + 0.6) / 2),
    # bestmin-2: row minima 0.1, 0.3, 0.35 -> two smallest 0.1, 0.3 -> 0.2; masked rows 0.1, 0.3
    "bestmin-2": ((0.1 + 0.3) / 2, (0.1 + 0.3) / 2),
}


@pytest.mark.parametrize("redux", list(GOLDEN))
def test_redux_golden_values(redux):
    plain, masked = GOLDEN[redux]
    tol = 1e-6 + (1e-7 if "bpwr" in redux else 0)  # bpwr adds U(0, 1e-7) tie-breaking noise
    assert distance_tensor_redux(D, redux).item() == pytest.approx(plain, abs=tol)
    assert distance_tensor_redux(D, redux, mask=M).item() == pytest.approx(masked, abs=tol)


def test_bestmin_differs_from_best():
    # the original's bestmin was unreachable and behaved as best; row minima: 0.1, 0.3, 0.35
    assert distance_tensor_redux(D, "best-2").item() == pytest.approx(0.15)
    assert distance_tensor_redux(D, "bestmin-2").item() == pytest.approx(0.2)


def test_randmin_picks_a_valid_row_minimum():
    torch.manual_seed(0)
    seen = {round(distance_tensor_redux(D, "randmin", mask=M).item(), 6) for _ in range(50)}
    assert seen == {0.1, 0.3}


ALL_REDUX = [
    "min",
    "max",
    "mean",
    "minmean",
    "meanmin",
    "randmin",
    "bpwr",
    "bpwr-3",
    "best",
    "best-4",
    "worst",
    "worst-3",
    "bestmin",
    "bestmin-2",
    "smin",
    "smeanmin",
    "sminmean",
    "sbpwr-2",
]


@pytest.mark.parametrize("redux", ALL_REDUX)
def test_all_masked_pair_ranks_last(redux):
    torch.manual_seed(0)
    dist = torch.rand(2, 3, 4, 5)
    mask = torch.zeros_like(dist, dtype=torch.bool)
    mask[0, 1] = True  # every segment pair of this track pair is invalid
    out = distance_tensor_redux(dist, redux, mask=mask)
    assert out.shape == (2, 3)
    assert out[0, 1].item() == pytest.approx(INF, rel=1e-6)
    others = torch.ones_like(out, dtype=torch.bool)
    others[0, 1] = False
    assert torch.all(out[others] <= 1.0 + 1e-6) and torch.all(out[others] >= 0)
    assert distance_tensor_redux(dist, redux, mask=mask, squeeze=False).shape == (2, 3, 1, 1)


def test_unknown_redux_lists_valid_names():
    for bad in ["median", "min-3", "bpwr-0", "bpwr-x", "ssmin", "", None]:
        with pytest.raises(ValueError, match="bpwr"):
            distance_tensor_redux(D, bad)


# --------------------------------------------------------------------------------------------------
# distance_tensor_redux against plain per-pair definitions on random data
# --------------------------------------------------------------------------------------------------


def _plain_redux(d, m, redux):
    """Straightforward implementation of one reduction for a single (S1, S2) block."""
    s1, s2 = d.shape
    cells = [(i, j) for i in range(s1) for j in range(s2) if not m[i, j]]
    if not cells:
        return INF
    vals = sorted(d[i, j] for i, j in cells)
    rows = [i for i in range(s1) if any(not m[i, j] for j in range(s2))]
    row_min = {i: min(d[i, j] for j in range(s2) if not m[i, j]) for i in rows}
    name, _, num = redux.partition("-")
    n = int(num) if num else None
    if redux.startswith("s") and name[1:] in reductions.REDUCTIONS:
        base = redux[1:]
        return 0.5 * (_plain_redux(d, m, base) + _plain_redux(d.T, m.T, base))
    if name == "min":
        return vals[0]
    if name == "max":
        return vals[-1]
    if name == "mean":
        return sum(vals) / len(vals)
    if name == "minmean":
        return min(sum(d[i, j] for j in range(s2) if not m[i, j]) / (~m[i]).sum() for i in rows)
    if name == "meanmin":
        return sum(row_min[i] * (~m[i]).sum() for i in rows) / sum((~m[i]).sum() for i in rows)
    if name == "best":
        k = n or 1
        return sum(vals[:k]) / len(vals[:k])
    if name == "worst":
        k = n or 1
        return sum(vals[-k:]) / len(vals[-k:])
    if name == "bestmin":
        mins = sorted(row_min.values())[: n or 1]
        return sum(mins) / len(mins)
    if name == "bpwr":
        npairs = min(s1, s2) if n is None else max(1, min(n, min(s1, s2)))
        free_rows, free_cols, taken = set(range(s1)), set(range(s2)), []
        for _ in range(npairs):
            options = [(d[i, j], i, j) for i, j in cells if i in free_rows and j in free_cols]
            if not options:
                break
            v, i, j = min(options)
            taken.append(v)
            free_rows.discard(i)
            free_cols.discard(j)
        return sum(taken) / len(taken)
    raise AssertionError(redux)


@pytest.mark.parametrize("redux", [r for r in ALL_REDUX if r != "randmin"])
@pytest.mark.parametrize("masked", [False, True])
def test_redux_matches_plain_definition(redux, masked):
    gen = torch.Generator().manual_seed(7)
    dist = torch.rand(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    if masked:
        qvalid = torch.rand(3, 5, generator=gen) > 0.3
        cvalid = torch.rand(4, 6, generator=gen) > 0.3
        mask = ~(qvalid[:, None, :, None] & cvalid[None, :, None, :])
    else:
        mask = torch.zeros_like(dist, dtype=torch.bool)
    got = distance_tensor_redux(dist, redux, mask=mask if masked else None)
    for a, b in itertools.product(range(3), range(4)):
        want = _plain_redux(dist[a, b].numpy(), mask[a, b].numpy(), redux)
        assert got[a, b].item() == pytest.approx(float(want), abs=2e-7), (a, b)


def test_bpwr_transposes_when_candidate_has_fewer_segments():
    torch.manual_seed(3)
    dist = torch.rand(2, 2, 6, 3, dtype=torch.float64)
    got = distance_tensor_redux(dist, "bpwr")
    swapped = distance_tensor_redux(dist.transpose(2, 3), "bpwr")
    assert torch.allclose(got, swapped, atol=2e-7)
