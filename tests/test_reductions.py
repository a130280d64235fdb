"""lib/reductions.py: the reduction grammar, and the numpy segment distances and reductions of
the torch-free matcher equal to the PyTorch ones (tensor_ops) for every reduction and metric."""

import numpy as np
import pytest
import torch

from lib import reductions, tensor_ops

EVERY = [
    "min", "max", "mean", "minmean", "meanmin", "bpwr", "bpwr-2", "best", "best-3", "worst",
    "worst-2", "bestmin", "bestmin-2", "smin", "smeanmin", "sbpwr-3", "sbest-2", "sminmean",
]


def random_case(seed, b1=2, b2=3, s1=4, s2=6):
    """Distances and an outer-product mask (padded windows) with one track of no valid
    window."""
    rng = np.random.default_rng(seed)
    dist = rng.random((b1, b2, s1, s2)).astype(np.float32) * 2
    qmask = rng.random((b1, s1)) < 0.25
    cmask = rng.random((b2, s2)) < 0.3
    qmask[:, 0] = cmask[:, 0] = False
    cmask[-1] = True  # a candidate without any valid window
    mask = qmask[:, None, :, None] | cmask[None, :, None, :]
    return dist, mask


@pytest.mark.parametrize("redux", EVERY)
@pytest.mark.parametrize("masked", [False, True])
def test_numpy_reductions_equal_the_torch_ones(redux, masked):
    for seed in range(3):
        dist, mask = random_case(seed)
        mask = mask if masked else None
        got = reductions.distance_redux(dist, redux, mask)
        # no tie-breaking noise on the torch side: random distances have no ties
        want = tensor_ops.distance_tensor_redux(
            torch.from_numpy(dist), redux, None if mask is None else torch.from_numpy(mask), eps=0
        ).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.allclose(got, want, rtol=1e-5, atol=1e-6), (redux, seed, got, want)
        if masked:
            assert (got[:, -1] == reductions.INF).all()  # the candidate without a window


def test_randmin_takes_the_row_minimum_of_a_valid_row():
    dist, mask = random_case(4)
    got = reductions.distance_redux(dist, "randmin", mask, rng=np.random.default_rng(0))
    row_min = np.where(mask, np.inf, dist).min(-1)
    for i in range(dist.shape[0]):
        for j in range(dist.shape[1] - 1):
            assert np.isclose(row_min[i, j], got[i, j]).any()


@pytest.mark.parametrize("metric", reductions.SEGMENT_METRICS)
def test_segment_distances_equal_the_torch_ones(metric):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 16)), rng.standard_normal((7, 16))
    want = tensor_ops.pairwise_distance_matrix(
        torch.from_numpy(x).float(), torch.from_numpy(y).float(), mode=metric
    ).numpy()
    got = reductions.segment_distances(x, y, metric)
    assert got.dtype == np.float32 and np.allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one of cos, sqeuc, nsqeuc"):
        reductions.segment_distances(x, y, "fro")


def test_the_grammar():
    assert reductions.parse_redux("bpwr-5") == (False, "bpwr", 5)
    assert str(reductions.parse_redux("smeanmin")) == "smeanmin"
    assert tensor_ops.parse_redux is reductions.parse_redux
    for bad in ("bpwr-0", "min-3", "nope", 3):
        with pytest.raises(ValueError):
            reductions.parse_redux(bad)
