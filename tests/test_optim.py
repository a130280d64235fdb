import pytest
import torch
from omegaconf import OmegaConf

from lib.optim import get_optimizer, get_scheduler


def optim_conf(**over):
    base = {"name": "adam", "lr": 1.0, "wd": 0.0, "sched": "flat", "min_lr": 0.0}
    return OmegaConf.create({**base, **over})


def lrs(sched_spec, epochs=10, metrics=None, mode="max", **over):
    conf = optim_conf(sched=sched_spec, **over)
    opt = get_optimizer(conf, [torch.nn.Parameter(torch.zeros(1))])
    sched, on_metric = get_scheduler(conf, opt, epochs, mode=mode)
    out = []
    for e in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(metrics[e]) if on_metric else sched.step()
    return out


def test_optimizers():
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(get_optimizer(optim_conf(name="Adam"), params), torch.optim.Adam)
    adamw = get_optimizer(optim_conf(name="adamw", wd=0.01), params)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01
    sgd = get_optimizer(optim_conf(name="sgd", lr=0.1), params)
    assert sgd.param_groups[0]["momentum"] == 0 and sgd.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="adamw"):
        get_optimizer(optim_conf(name="lamb"), params)


def test_flat_and_null():
    assert lrs("flat") == [1.0] * 10
    assert lrs(None) == [1.0] * 10


def test_plateau_reduces_on_the_nth_epoch_without_improvement():
    metrics = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    got = lrs("plateau_3", metrics=metrics)
    # best at epoch 2; epochs 3, 4, 5 do not improve -> reduced after the third
    assert got[:6] == [1.0] * 6 and got[6] == pytest.approx(0.2)
    assert lrs("plateau_1", metrics=[0.5] * 10, mode="min")[2] == pytest.approx(0.2)


def test_poly_and_warmpoly():
    assert lrs("poly_2") == pytest.approx([(1 - e / 10) ** 2 for e in range(10)])
    got = lrs("warmpoly_2_1")
    assert got[0] == pytest.approx(0.005) and got[1] == pytest.approx(0.005 + 0.995 / 2)
    assert got[2:] == pytest.approx([1 - (e - 2) / 8 for e in range(2, 10)])
    with pytest.raises(ValueError, match="must exceed"):
        lrs("warmpoly_10_1")


def test_sd_and_wsd():
    got = lrs("sd_3")  # constant for 10 - 4 epochs, then power-2 decay over 4
    assert got[:6] == [1.0] * 6
    assert got[6:] == pytest.approx([(1 - k / 4) ** 2 for k in range(4)])
    got = lrs("wsd_2_3")
    assert got[0] == pytest.approx(0.005) and got[2:6] == [1.0] * 4
    assert got[6:] == pytest.approx([(1 - k / 4) ** 2 for k in range(4)])
    with pytest.raises(ValueError, match="must exceed"):
        lrs("wsd_5_5")


def test_cosine_with_warmup_like_discogs_vinet_mirex():
    got = lrs("cosine_5", epochs=40, lr=1e-2, min_lr=1e-4)
    assert got[0] == pytest.approx(1e-4)
    assert got[5] == pytest.approx(1e-2)
    assert got[4] == pytest.approx(1e-4 + (1e-2 - 1e-4) * 4 / 5)
    assert got[-1] < 1e-3 and all(a >= b for a, b in zip(got[5:], got[6:]))
    assert lrs("cosine", epochs=4) == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def test_step_schedule_as_move():
    # MOVE: SGD 0.1, x0.2 at epochs 80 and 100 of 120 (its MultiStepLR, stepped per epoch)
    got = lrs("step_0.2_80_100", epochs=120, name="sgd", lr=0.1)
    assert got[:80] == pytest.approx([0.1] * 80)
    assert got[80:100] == pytest.approx([0.02] * 20) and got[100:] == pytest.approx([0.004] * 20)
    assert lrs("step_0.5_3", epochs=5) == pytest.approx([1, 1, 1, 0.5, 0.5])


def test_unknown_schedule():
    for bad in ("linear", "plateau", "poly_x", "sd_1_2", "step_0.2"):
        with pytest.raises(ValueError, match="plateau_N"):
            lrs(bad, metrics=[0.0] * 10)
