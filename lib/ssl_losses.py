"""Self-supervised objectives of the multi-view benchmark (Deezer; ``../shared/reference/
multiview_ssl.md`` section 3), with the reference's constants and its fixes of the original:
NT-Xent valid for any number of views, the standard BYOL form, EMA schedules sized to the real
run. No labels: every loss takes the projections of V views of the same N clips.

Shapes: ``views`` is a sequence of V tensors (N, D), row n of each the same clip; the
asymmetric methods (BYOL, DINO) take the student's and the teacher's views separately.
Pairs: ordered (i != j) for BYOL and DINO, unordered (i < j) for Barlow Twins and VICReg, as in
the reference.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

NTXENT_TEMPERATURE = 0.1
BN_EPS = 1e-5  # BatchNorm1d's, for the batch standardisation of Barlow Twins and VICReg
VICREG_EPS = 1e-5
VICREG_GAMMA = 1.0
BARLOW_OFF_COEF = 1.0
DINO_STUDENT_TEMPERATURE = 0.1
DINO_TEACHER_TEMPERATURES = (0.02, 0.04)  # warmed up (sharper first) along a cosine
DINO_TEACHER_WARMUP_EPOCHS = 10
DINO_CENTRE_MOMENTUM = 0.9
EMA_START = 0.996


def full(x):
    """``x`` in at least float32 (half-precision activations would lose the loss's precision)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def nt_xent(views, temperature=NTXENT_TEMPERATURE):
    """SimCLR's NT-Xent on cosine similarities / ``temperature`` of V >= 2 views (N, D). Every
    row is an anchor; its positives are the other views of its clip, and for each positive the
    term is -s(a, p) + log sum over every other row b != a of exp s(a, b) (the denominator keeps
    the positives, as SimCLR's). The mean over anchors and their positives; for V = 2 exactly
    SimCLR's loss (the original reshaped positives that only line up when V = 2)."""
    nviews = len(views)
    if nviews < 2:
        raise ValueError(f"NT-Xent needs at least 2 views, got {nviews}")
    count = views[0].shape[0]
    u = F.normalize(full(torch.cat(list(views))), dim=-1)
    logits = u @ u.T / temperature
    rows = torch.arange(nviews * count, device=u.device)
    self_pair = rows[:, None] == rows[None, :]
    clip = rows % count
    positive = (clip[:, None] == clip[None, :]) & ~self_pair
    log_denominator = torch.logsumexp(logits.masked_fill(self_pair, -math.inf), dim=1)
    per_pair = log_denominator[:, None] - logits
    return per_pair[positive].mean()


def byol_loss(predictions, targets):
    """BYOL: 2 - 2 cos(student prediction of view j, teacher projection of view i), the mean over
    clips and ordered pairs i != j (the standard form; the original summed over the batch axis,
    the same up to a gradient scale). ``targets`` carry no gradient."""
    terms = []
    for i, target in enumerate(targets):
        for j, prediction in enumerate(predictions):
            if i != j:
                cos = F.cosine_similarity(full(prediction), full(target.detach()), dim=-1)
                terms.append(2 - 2 * cos.mean())
    return torch.stack(terms).mean()


def batch_standardise(x, eps=BN_EPS):
    """(N, D) -> every feature standardised over the batch (BatchNorm1d without affine
    parameters in training mode: biased variance)."""
    x = full(x)
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)


def off_diagonal(matrix):
    count = matrix.shape[0]
    return matrix.masked_select(~torch.eye(count, dtype=torch.bool, device=matrix.device))


def barlow_twins_loss(views, off_coef=BARLOW_OFF_COEF):
    """The reference's DiagonalLoss: for each unordered view pair, C = a^T b / (N - 1) of the
    batch-standardised projections, mean_i (1 - C_ii)^2 + off_coef * mean_{i != j} C_ij^2 (means,
    not sums: off_coef 1 is Barlow Twins' lambda 1 / (D - 1)); the mean over pairs."""
    terms = []
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            a, b = batch_standardise(views[i]), batch_standardise(views[j])
            corr = a.T @ b / (a.shape[0] - 1)
            on = (1 - torch.diagonal(corr)).pow(2).mean()
            terms.append(on + off_coef * off_diagonal(corr).pow(2).mean())
    return torch.stack(terms).mean()


def vicreg_terms(a, b, gamma=VICREG_GAMMA, eps=VICREG_EPS):
    """(invariance, variance, covariance) of the reference's feature_stats for one view pair
    (N, D): the MSE between the views; the mean over the 2D features of both views of
    relu(gamma - sqrt(unbiased variance + eps)); the mean over both views of the mean squared
    off-diagonal entry of the correlation matrix x^T x / (N - 1) of the batch-standardised
    features (a correlation, not VICReg's covariance)."""
    a, b = full(a), full(b)
    invariance = F.mse_loss(a, b)
    stds = torch.sqrt(torch.cat([a.var(0), b.var(0)]) + eps)
    variance = F.relu(gamma - stds).mean()
    covariance = 0
    for x in (a, b):
        s = batch_standardise(x)
        covariance = covariance + off_diagonal(s.T @ s / (x.shape[0] - 1)).pow(2).mean() / 2
    return invariance, variance, covariance


def vicreg_pair_terms(views):
    """``vicreg_terms`` of every unordered view pair."""
    return [
        vicreg_terms(views[i], views[j])
        for i in range(len(views))
        for j in range(i + 1, len(views))
    ]


def vicreg_from_terms(pair_terms, weights=(1.0, 1.0, 1.0)):
    """weights . (invariance, variance, covariance), the mean over the pairs' terms."""
    return torch.stack([sum(w * t for w, t in zip(weights, terms)) for terms in pair_terms]).mean()


def vicreg_loss(views, weights=(1.0, 1.0, 1.0)):
    """Feature statistics (VICReg-like): weights . (invariance, variance, covariance), the mean
    over unordered view pairs; the reference's weights are 1 / 1 / 1."""
    return vicreg_from_terms(vicreg_pair_terms(views), weights)


def dino_teacher_temperature(epoch):
    """The teacher's temperature in ``epoch`` (from 0): 0.02 rising to 0.04 along a half cosine
    over the first 10 epochs, then 0.04."""
    low, high = DINO_TEACHER_TEMPERATURES
    if epoch >= DINO_TEACHER_WARMUP_EPOCHS:
        return high
    return high - (high - low) * (1 + math.cos(math.pi * epoch / DINO_TEACHER_WARMUP_EPOCHS)) / 2


class DinoLoss(nn.Module):
    """The reference's clustering loss (DINO-like, no Sinkhorn): the cross-entropy from the
    teacher's centred, sharpened distribution of view i to the student's of view j, the mean over
    clips and ordered pairs i != j. In training mode each call then moves the centre (a buffer,
    saved with the model) towards the mean raw teacher logit: c <- 0.9 c + 0.1 mean."""

    def __init__(self, dim, student_temperature=DINO_STUDENT_TEMPERATURE):
        super().__init__()
        self.student_temperature = student_temperature
        self.register_buffer("centre", torch.zeros(dim))

    def forward(self, student_logits, teacher_logits, epoch):
        teacher_t = dino_teacher_temperature(epoch)
        log_students = [
            F.log_softmax(full(s) / self.student_temperature, dim=-1) for s in student_logits
        ]
        teachers = [
            F.softmax((full(t.detach()) - self.centre) / teacher_t, dim=-1)
            for t in teacher_logits
        ]
        terms = []
        for i, teacher in enumerate(teachers):
            for j, log_student in enumerate(log_students):
                if i != j:
                    terms.append(-(teacher * log_student.clamp_min(-100)).sum(-1).mean())
        if self.training:
            with torch.no_grad():
                mean = torch.cat([full(t.detach()) for t in teacher_logits]).mean(0)
                self.centre.mul_(DINO_CENTRE_MOMENTUM).add_((1 - DINO_CENTRE_MOMENTUM) * mean)
        return torch.stack(terms).mean()


def ema_momentum(step, total_steps, start=EMA_START):
    """The teacher's EMA momentum at global ``step``: ``start`` rising to 1 along a half cosine
    over ``total_steps``, the run's real length (the original sized it to 999 epochs, so its
    momentum hardly moved)."""
    if total_steps <= 0 or step >= total_steps:
        return 1.0
    return 1 - (1 - start) * (1 + math.cos(math.pi * step / total_steps)) / 2


@torch.no_grad()
def ema_update(teacher, student, momentum):
    """teacher <- momentum * teacher + (1 - momentum) * student for the parameters; floating
    buffers (BatchNorm statistics) likewise, integer ones (batch counts) copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(s, alpha=1 - momentum)
        else:
            t.copy_(s)


# collapse monitors (logged to TensorBoard by the pre-training loop)


@torch.no_grad()
def dimension_std(z):
    """Mean over dimensions of the batch std of L2-normalised embeddings (N, D): about
    1 / sqrt(D) when they spread, 0 when every clip maps to one point."""
    return F.normalize(full(z), dim=-1).std(0).mean()


@torch.no_grad()
def effective_rank(z):
    """exp(entropy of the normalised singular values) of the centred embeddings (N, D) (Roy &
    Vetterli 2007): from 1 (a line) to min(N, D) (full use of the space)."""
    z = full(z) - full(z).mean(0)
    values = torch.linalg.svdvals(z)
    p = values / values.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


@torch.no_grad()
def view_agreement(views):
    """Mean cosine between the views of the same clip (1: identical, the goal of the invariance
    and of a collapse alike; read it beside the std and the rank)."""
    cos = [
        F.cosine_similarity(full(views[i]), full(views[j]), dim=-1).mean()
        for i in range(len(views))
        for j in range(i + 1, len(views))
    ]
    return torch.stack(cos).mean()


@torch.no_grad()
def mean_entropy(logits, temperature, centre=None):
    """Mean entropy (nats) of softmax((logits - centre) / temperature): DINO's teacher collapses
    to one cluster at 0 or to uniform at log(K)."""
    logits = full(logits) - (0 if centre is None else centre)
    p = F.softmax(logits / temperature, dim=-1)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
