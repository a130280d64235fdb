"""The self-supervised losses against cases computed by hand (plain Python loops over the
formulas of ../shared/reference/multiview_ssl.md section 3), and the schedules and monitors."""

import math

import pytest
import torch

from lib import ssl_losses as S


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_nt_xent_two_views_is_simclr_by_hand():
    v1, v2 = rand(3, 4, seed=1), rand(3, 4, seed=2)
    rows = [r.tolist() for r in torch.cat([v1, v2])]
    total = 0.0
    for a in range(6):
        s = [cos(rows[a], rows[b]) / 0.1 for b in range(6)]
        positive = (a + 3) % 6
        total += -s[positive] + math.log(sum(math.exp(s[b]) for b in range(6) if b != a))
    assert S.nt_xent([v1, v2]).item() == pytest.approx(total / 6, rel=1e-9)


def test_nt_xent_three_views_pairs_every_other_view_of_the_clip():
    views = [rand(2, 3, seed=s) for s in (3, 4, 5)]
    rows = [r.tolist() for r in torch.cat(views)]
    terms = []
    for a in range(6):
        s = [cos(rows[a], rows[b]) / 0.1 for b in range(6)]
        log_den = math.log(sum(math.exp(s[b]) for b in range(6) if b != a))
        terms += [log_den - s[p] for p in range(6) if p != a and p % 2 == a % 2]
    assert len(terms) == 12
    assert S.nt_xent(views).item() == pytest.approx(sum(terms) / 12, rel=1e-9)
    with pytest.raises(ValueError, match="2 views"):
        S.nt_xent(views[:1])


def test_byol_is_two_minus_two_mean_cosine_over_ordered_pairs():
    p1, p2, t1, t2 = (rand(4, 5, seed=s) for s in range(10, 14))
    by_hand = 0.0
    for pred, target in ((p2, t1), (p1, t2)):  # teacher view i, student view j != i
        mean_cos = sum(cos(pred[n].tolist(), target[n].tolist()) for n in range(4)) / 4
        by_hand += (2 - 2 * mean_cos) / 2
    assert S.byol_loss([p1, p2], [t1, t2]).item() == pytest.approx(by_hand, rel=1e-9)
    # each view's prediction equal to the teacher's projection of the other view: no loss
    assert S.byol_loss([t2, t1], [t1, t2]).item() == pytest.approx(0.0, abs=1e-12)
    assert S.byol_loss([t1, t2], [t1, t2]).item() > 0.5


def standardised_by_hand(x):
    n, d = len(x), len(x[0])
    out = [[0.0] * d for _ in range(n)]
    for k in range(d):
        col = [x[i][k] for i in range(n)]
        mean = sum(col) / n
        var = sum((c - mean) ** 2 for c in col) / n  # biased, as BatchNorm's batch statistics
        for i in range(n):
            out[i][k] = (col[i] - mean) / math.sqrt(var + 1e-5)
    return out


def test_barlow_twins_means_of_the_cross_correlation_by_hand():
    a, b = rand(5, 3, seed=20), rand(5, 3, seed=21)
    sa, sb = standardised_by_hand(a.tolist()), standardised_by_hand(b.tolist())
    c = [[sum(sa[n][i] * sb[n][j] for n in range(5)) / 4 for j in range(3)] for i in range(3)]
    on = sum((1 - c[i][i]) ** 2 for i in range(3)) / 3
    off = sum(c[i][j] ** 2 for i in range(3) for j in range(3) if i != j) / 6
    assert S.barlow_twins_loss([a, b]).item() == pytest.approx(on + off, rel=1e-9)
    assert S.barlow_twins_loss([a, b], off_coef=0.0).item() == pytest.approx(on, rel=1e-9)


def test_vicreg_terms_by_hand():
    a, b = rand(6, 3, seed=30), rand(6, 3, seed=31) * 0.3
    la, lb = a.tolist(), b.tolist()
    inv = sum((la[n][k] - lb[n][k]) ** 2 for n in range(6) for k in range(3)) / 18
    hinge = []
    for x in (la, lb):
        for k in range(3):
            col = [x[n][k] for n in range(6)]
            mean = sum(col) / 6
            std = math.sqrt(sum((c - mean) ** 2 for c in col) / 5 + 1e-5)  # unbiased
            hinge.append(max(0.0, 1 - std))
    var = sum(hinge) / 6
    cov = 0.0
    for x in (la, lb):
        s = standardised_by_hand(x)
        r = [[sum(s[n][i] * s[n][j] for n in range(6)) / 5 for j in range(3)] for i in range(3)]
        cov += sum(r[i][j] ** 2 for i in range(3) for j in range(3) if i != j) / 6 / 2
    got = S.vicreg_terms(a, b)
    assert [t.item() for t in got] == pytest.approx([inv, var, cov], rel=1e-9)
    assert var > 0.3  # the shrunk view is penalised
    assert S.vicreg_loss([a, b]).item() == pytest.approx(inv + var + cov, rel=1e-9)


def test_dino_cross_entropy_centre_and_teacher_temperature_by_hand():
    s1, s2, t1, t2 = (rand(2, 4, seed=s) for s in range(40, 44))
    loss = S.DinoLoss(4).double()
    loss.centre.copy_(torch.tensor([0.5, -0.5, 0.0, 0.25]))
    centre = loss.centre.tolist()

    def softmax(v, temp):
        e = [math.exp(x / temp) for x in v]
        return [x / sum(e) for x in e]

    temp_t = 0.04 - 0.02 * (1 + math.cos(math.pi * 3 / 10)) / 2  # epoch 3 of the warm-up
    total = 0.0
    for t, s in ((t1, s2), (t2, s1)):
        for n in range(2):
            pt = softmax([x - c for x, c in zip(t[n].tolist(), centre)], temp_t)
            ps = softmax(s[n].tolist(), 0.1)
            total += -sum(p * math.log(q) for p, q in zip(pt, ps)) / 2 / 2
    got = loss([s1, s2], [t1, t2], epoch=3)
    assert got.item() == pytest.approx(total, rel=1e-6)
    mean_logit = torch.cat([t1, t2]).mean(0)
    expected = 0.9 * torch.tensor(centre, dtype=torch.float64) + 0.1 * mean_logit
    assert torch.allclose(loss.centre, expected)
    loss.eval()  # no centre update outside training
    loss([s1, s2], [t1, t2], epoch=3)
    assert torch.allclose(loss.centre, expected)


def test_dino_teacher_temperature_warms_up_from_0_02_to_0_04():
    temps = [S.dino_teacher_temperature(e) for e in range(12)]
    assert temps[0] == pytest.approx(0.02) and temps[5] == pytest.approx(0.03)
    assert temps[10] == temps[11] == 0.04
    assert all(a < b for a, b in zip(temps[:10], temps[1:11]))


def test_ema_momentum_spans_the_real_run_and_ema_update():
    assert S.ema_momentum(0, 100) == pytest.approx(0.996)
    assert S.ema_momentum(50, 100) == pytest.approx(0.998)
    assert S.ema_momentum(100, 100) == 1.0
    student, teacher = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.fill_(3.0)
        student.running_mean.fill_(1.0)
        student.num_batches_tracked.fill_(7)
    S.ema_update(teacher, student, 0.75)
    assert torch.allclose(teacher.weight, torch.full((2,), 0.75 * 1 + 0.25 * 3))
    assert torch.allclose(teacher.running_mean, torch.full((2,), 0.25))
    assert int(teacher.num_batches_tracked) == 7


def test_collapse_monitors_tell_spread_from_collapse():
    spread = rand(64, 8, seed=50)
    collapsed = torch.ones(64, 8, dtype=torch.float64) + 1e-9 * spread
    assert S.dimension_std(spread) > 0.2 and S.dimension_std(collapsed) < 1e-6
    assert S.effective_rank(spread) > 6.5
    line = rand(64, 1, seed=51) * torch.ones(1, 8, dtype=torch.float64)
    assert S.effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert S.view_agreement([spread, spread]).item() == pytest.approx(1.0)
    assert abs(S.view_agreement([spread, rand(64, 8, seed=52)]).item()) < 0.2
    uniform = torch.zeros(5, 16)
    assert S.mean_entropy(uniform, 0.04).item() == pytest.approx(math.log(16), rel=1e-6)
    peaked = torch.zeros(5, 16)
    peaked[:, 3] = 10.0
    assert S.mean_entropy(peaked, 0.04).item() < 1e-6
