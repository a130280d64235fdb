import math

import pytest
import torch

from models.parts import losses as L

DIST = torch.tensor(
    [
        [0.0, 1.0, 3.0, 0.5],
        [1.0, 0.0, 2.0, 4.0],
        [3.0, 2.0, 0.0, 1.5],
        [0.5, 4.0, 1.5, 0.0],
    ]
)
LABELS = torch.tensor([0, 0, 1, 1])
IDS = torch.tensor([10, 11, 12, 13])


def test_batch_hard_triplet_by_hand():
    loss, d_pos, d_neg, valid = L.triplet_loss(DIST, LABELS, IDS, margin=0.3)
    # anchors: 0 -> p 1.0, n 0.5: 0.8; 1 -> 1.0 vs 2.0: 0; 2 -> 1.5 vs 2.0: 0; 3 -> 1.5 vs 0.5: 1.3
    assert d_pos.tolist() == [1.0, 1.0, 1.5, 1.5] and d_neg.tolist() == [0.5, 2.0, 2.0, 0.5]
    assert loss.item() == pytest.approx((0.8 + 1.3) / 4) and bool(valid.all())


def test_same_song_is_not_a_positive_and_anchors_without_positive_are_left_out():
    ids = torch.tensor([10, 10, 12, 13])  # items 0 and 1 are the same recording
    loss, _, _, valid = L.triplet_loss(DIST, LABELS, ids, margin=0.3)
    assert valid.tolist() == [False, False, True, True]
    assert loss.item() == pytest.approx((0 + 1.3) / 2)


SIX = torch.tensor(
    [
        [0.0, 0.2, 0.9, 0.5, 1.0, 1.1],
        [0.2, 0.0, 0.3, 2.0, 2.0, 2.0],
        [0.9, 0.3, 0.0, 2.0, 2.0, 2.0],
        [0.5, 2.0, 2.0, 0.0, 0.1, 0.1],
        [1.0, 2.0, 2.0, 0.1, 0.0, 0.1],
        [1.1, 2.0, 2.0, 0.1, 0.1, 0.0],
    ]
)
SIX_LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


def test_positive_mining_strategies():
    pos, _ = L.pair_masks(SIX_LABELS)
    assert L.mine_positives(SIX, pos, "easy")[0].item() == 1
    assert L.mine_positives(SIX, pos, "hard")[0].item() == 2
    gen = torch.Generator().manual_seed(0)
    drawn = {L.mine_positives(SIX, pos, "random", gen)[0].item() for _ in range(50)}
    assert drawn == {1, 2}
    with pytest.raises(ValueError, match="unknown positive mining"):
        L.mine_positives(SIX, pos, "hardest")


def test_negative_mining_strategies():
    _, neg = L.pair_masks(SIX_LABELS)
    d_pos = torch.full((6,), 0.9)  # anchor 0's hard positive
    assert L.mine_negatives(SIX, neg, d_pos, "hard")[0].item() == 3  # 0.5, the closest
    gen = torch.Generator().manual_seed(0)
    semi = {L.mine_negatives(SIX, neg, d_pos, "semihard", 0.3, gen)[0].item() for _ in range(50)}
    assert semi == {4, 5}  # 1.0 and 1.1 lie in (0.9, 1.2); 0.5 is hard, none beyond
    rand = {L.mine_negatives(SIX, neg, d_pos, "random", 0.3, gen)[0].item() for _ in range(80)}
    assert rand == {3, 4, 5}
    # no negative in the band: the closest one farther than the positive
    dist = SIX.clone()
    dist[0, 3:] = torch.tensor([0.5, 2.0, 3.0])
    assert L.mine_negatives(dist, neg, d_pos, "semihard", 0.3)[0].item() == 4
    # every negative closer than the positive: the farthest (least hard) one
    dist[0, 3:] = torch.tensor([0.5, 0.6, 0.4])
    assert L.mine_negatives(dist, neg, d_pos, "semihard", 0.3)[0].item() == 4


def test_moves_legacy_semihard_prefers_hard_negatives():
    # MOVE's "semi-hard": uniform among the negatives closer than the positive (0.5 < 0.9 in
    # SIX: only item 3), else uniform among all negatives
    _, neg = L.pair_masks(SIX_LABELS)
    d_pos = torch.full((6,), 0.9)
    gen = torch.Generator().manual_seed(0)
    how = "move_legacy_semihard"
    assert {L.mine_negatives(SIX, neg, d_pos, how, 1.0, gen)[0].item() for _ in range(30)} == {3}
    dist = SIX.clone()
    dist[0, 3:] = torch.tensor([0.5, 0.6, 2.0])  # two hard negatives
    assert {L.mine_negatives(dist, neg, d_pos, how, 1.0, gen)[0].item() for _ in range(50)} == {
        3,
        4,
    }
    dist[0, 3:] = torch.tensor([1.5, 1.6, 2.0])  # none closer than the positive: any negative
    picks = {L.mine_negatives(dist, neg, d_pos, how, 1.0, gen)[0].item() for _ in range(80)}
    assert picks == {3, 4, 5}


def test_mirex_recipe_normalises_and_uses_margin_03():
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    loss, d_pos, d_neg, _ = L.mirex_triplet_loss(z, labels)
    # normalised: items 0 and 2 coincide, 1 and 3 coincide; positives at 0, negatives at sqrt 2
    assert torch.allclose(d_pos, torch.zeros(4), atol=1e-5)
    assert torch.allclose(d_neg, torch.full((4,), math.sqrt(2)), atol=1e-5)
    assert loss.item() == pytest.approx(0.0)


def test_focal_center_and_smoothed_losses_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    label = torch.tensor([1])
    assert L.focal_loss(logits, label, gamma=2).item() == pytest.approx(
        -(0.25**2) * math.log(0.75), rel=1e-5
    )
    assert L.focal_loss(logits, label, gamma=0).item() == pytest.approx(-math.log(0.75), rel=1e-5)
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    centers = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert L.center_loss(feats, torch.tensor([0, 1]), centers).item() == pytest.approx(1.0)
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    logp = logits.log_softmax(-1)[0]
    want = -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2])
    got = L.smoothed_cross_entropy(logits, torch.tensor([0]), smoothing=0.3)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_euclidean_has_finite_gradient_at_zero():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    d = L.euclidean(x, x)
    d.sum().backward()
    assert torch.isfinite(x.grad).all() and d[0, 1].item() == 0


def test_class_ids_beyond_the_classifier_are_a_clear_error():
    L.check_class_ids(torch.tensor([0, 9]), 10)
    with pytest.raises(ValueError, match="model.maxcliques"):
        L.check_class_ids(torch.tensor([0, 10]), 10)


def test_similarity_triplet_by_hand():
    sim = 1 - DIST / 4  # similar = close
    loss, s_pos, s_neg, valid = L.similarity_triplet_loss(sim, LABELS, IDS, margin=0.1)
    # hard positive = least similar, hard negative = most similar; relu(1.1 s_an - s_ap)
    assert s_pos.tolist() == [0.75, 0.75, 0.625, 0.625]
    assert s_neg.tolist() == [0.875, 0.5, 0.5, 0.875]
    want = [max(0.0, 1.1 * n - p) for p, n in zip(s_pos.tolist(), s_neg.tolist())]
    assert loss.item() == pytest.approx(sum(want) / 4) and bool(valid.all())


def test_mining_from_config_and_masked_mean():
    assert L.mining_from_conf({}) == ("hard", "hard")
    conf = {"mining": {"positive": "random", "negative": "semihard"}}
    assert L.mining_from_conf(conf) == ("random", "semihard")
    with pytest.raises(ValueError, match="model.mining.positive='hardest'"):
        L.mining_from_conf({"mining": {"positive": "hardest"}})
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[True, False], [False, True]])
    assert L.masked_mean(values, mask).item() == 2.5
    assert L.masked_mean(values, torch.zeros_like(mask)).item() == 0.0
