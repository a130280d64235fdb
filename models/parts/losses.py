"""Losses shared by the baseline models: triplet losses with online mining, focal, centre and
label-smoothed classification losses.

Triplets are mined inside a batch from a distance matrix ``dist`` (B, B): for every anchor i,
positives are the items with the same label and another song id, negatives the items with another
label. Anchors without any positive or any negative take no part (they are left out of the mean).

Positive mining: ``random`` (uniform among the positives), ``easy`` (the closest), ``hard`` (the
farthest). Negative mining: ``random`` (uniform among the negatives), ``hard`` (the closest),
``semihard`` (uniform among the negatives farther than the chosen positive but within the margin,
d_ap < d_an < d_ap + margin; where there is none, the closest negative farther than the positive;
where no negative is farther, the farthest negative). The tutorial these names come from selected
its semi-hard negatives with a mask it added to itself and cast to integers, and its hard
positives by maximising ``dist * mask``; the definitions here follow the names.
``move_legacy_semihard`` is what MOVE's code calls semi-hard, kept to reproduce it: uniform among
the negatives closer than the positive (hard ones, d_an < d_ap), else among all negatives.
"""

import torch
import torch.nn.functional as F

from lib.schema import NEGATIVE_MINING, POSITIVE_MINING  # declared with the config keys


def pair_masks(labels, ids=None):
    """(positive, negative) bool (B, B): same label and another song id (another batch position
    when ``ids`` is None); another label."""
    same = labels[:, None] == labels[None, :]
    if ids is None:
        other = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    else:
        other = ids[:, None] != ids[None, :]
    return same & other, ~same


def _random_choice(allowed, generator=None):
    """Index of one uniformly chosen True per row of ``allowed`` (B, N); rows without any get 0."""
    score = torch.rand(allowed.shape, generator=generator, device=allowed.device)
    return score.masked_fill(~allowed, -1.0).argmax(-1)


def mine_positives(dist, positive, how="random", generator=None):
    """Index (B,) of each anchor's positive."""
    if how == "random":
        return _random_choice(positive, generator)
    if how == "easy":
        return dist.masked_fill(~positive, float("inf")).argmin(-1)
    if how == "hard":
        return dist.masked_fill(~positive, float("-inf")).argmax(-1)
    raise ValueError(f"unknown positive mining {how!r}; valid: {', '.join(POSITIVE_MINING)}")


def mine_negatives(dist, negative, d_pos, how="hard", margin=0.3, generator=None):
    """Index (B,) of each anchor's negative; ``d_pos`` (B,) are the chosen positive distances."""
    if how == "random":
        return _random_choice(negative, generator)
    if how == "hard":
        return dist.masked_fill(~negative, float("inf")).argmin(-1)
    if how == "semihard":
        farther = negative & (dist > d_pos[:, None])
        band = farther & (dist < d_pos[:, None] + margin)
        in_band = _random_choice(band, generator)
        closest_farther = dist.masked_fill(~farther, float("inf")).argmin(-1)
        farthest = dist.masked_fill(~negative, float("-inf")).argmax(-1)
        pick = torch.where(farther.any(-1), closest_farther, farthest)
        return torch.where(band.any(-1), in_band, pick)
    if how == "move_legacy_semihard":
        closer = negative & (dist < d_pos[:, None])
        return torch.where(
            closer.any(-1), _random_choice(closer, generator), _random_choice(negative, generator)
        )
    raise ValueError(f"unknown negative mining {how!r}; valid: {', '.join(NEGATIVE_MINING)}")


def triplet_loss(
    dist, labels, ids=None, margin=0.3, positives="hard", negatives="hard", generator=None
):
    """Mean over anchors of relu(d(a, p) - d(a, n) + margin) with mined p and n.

    Returns (loss, d_pos (B,), d_neg (B,), valid (B,)): the mined distances and which anchors had
    both a positive and a negative."""
    positive, negative = pair_masks(labels, ids)
    valid = positive.any(-1) & negative.any(-1)
    rows = torch.arange(len(labels), device=dist.device)
    d_pos = dist[rows, mine_positives(dist, positive, positives, generator)]
    d_neg = dist[rows, mine_negatives(dist, negative, d_pos, negatives, margin, generator)]
    hinge = F.relu(d_pos - d_neg + margin)
    loss = hinge[valid].mean() if bool(valid.any()) else dist.sum() * 0
    return loss, d_pos, d_neg, valid


def similarity_triplet_loss(
    sim, labels, ids=None, margin=0.1, positives="hard", negatives="hard", generator=None
):
    """ByteCover3x's triplet on similarities ``sim`` (B, B): mean over anchors of
    relu((1 + margin) s(a, n) - s(a, p)), p and n mined on the distance -sim (hard positive = the
    least similar, hard negative = the most similar).

    Returns (loss, s_pos (B,), s_neg (B,), valid (B,))."""
    positive, negative = pair_masks(labels, ids)
    valid = positive.any(-1) & negative.any(-1)
    rows = torch.arange(len(labels), device=sim.device)
    dist = -sim
    d_pos = dist[rows, mine_positives(dist, positive, positives, generator)]
    d_neg = dist[rows, mine_negatives(dist, negative, d_pos, negatives, margin, generator)]
    hinge = F.relu(-(1 + margin) * d_neg + d_pos)
    loss = hinge[valid].mean() if bool(valid.any()) else sim.sum() * 0
    return loss, -d_pos, -d_neg, valid


def mining_from_conf(conf):
    """(positive, negative) mining of a model config's ``mining`` section (hard / hard, the
    original's batch-hard triplets, when absent); an unknown name is a ``ValueError``."""
    mining = conf.get("mining") or {}
    positive = mining.get("positive", "hard")
    negative = mining.get("negative", "hard")
    if positive not in POSITIVE_MINING:
        raise ValueError(f"model.mining.positive={positive!r}: one of {', '.join(POSITIVE_MINING)}")
    if negative not in NEGATIVE_MINING:
        raise ValueError(f"model.mining.negative={negative!r}: one of {', '.join(NEGATIVE_MINING)}")
    return positive, negative


def masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` is True; 0 when there is none (for logging)."""
    count = mask.sum()
    return (values * mask).sum() / count.clamp(min=1)


def mirex_triplet_loss(z, labels, ids=None, generator=None):
    """The Discogs-VINet-MIREX recipe: L2-normalised embeddings (B, D), Euclidean distances,
    random positives, hard negatives, margin 0.3."""
    z = F.normalize(z, dim=-1)
    dist = euclidean(z, z)
    return triplet_loss(dist, labels, ids, 0.3, "random", "hard", generator)


def euclidean(x, y):
    """Euclidean distances (N, M) between the rows of x (N, D) and y (M, D), from the
    differences (as the original's small batches did), not from ||x||^2 - 2 x.y + ||y||^2: that
    form loses the distances of near-identical embeddings (an untrained model's) to rounding.
    The gradient is 0, not NaN, where a distance is 0."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def focal_loss(logits, labels, gamma=2.0, eps=2.2e-16):
    """Mean of -(1 - p_y)^gamma * log p_y over the batch (no class weighting)."""
    p = logits.softmax(-1).gather(-1, labels[:, None]).squeeze(-1) + eps
    return (-((1 - p) ** gamma) * p.log()).mean()


def center_loss(features, labels, centers):
    """Mean over the batch of the squared distance of each feature (B, D) to the centre of its
    class (centers: (num_classes, D))."""
    return (features - centers[labels]).pow(2).sum(-1).mean()


def smoothed_cross_entropy(logits, labels, smoothing=0.1):
    """Cross-entropy with label smoothing ``smoothing``."""
    return F.cross_entropy(logits, labels, label_smoothing=float(smoothing))


def check_class_ids(labels, num_classes, what="clique id"):
    """Classifier models: a label outside [0, num_classes) is a configuration error."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{what} {int(labels.max())} does not fit a classifier of {num_classes} classes "
            "(model.maxcliques): raise model.maxcliques above the number of cliques"
        )
