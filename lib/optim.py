"""Optimisers and learning-rate schedules (``training.optim`` of the configs). Every schedule is
stepped once per epoch: ``scheduler.step()``, or ``scheduler.step(metric)`` for ``plateau_N``.

Schedules (``sched``; E = training.numepochs, lr = training.optim.lr):
    flat (or null)   constant
    plateau_N        lr x 0.2 on the N-th consecutive epoch without improvement of the monitor
    poly_P           lr (1 - e / E)^P
    warmpoly_W_P     linear warm-up from 0.005 lr over W epochs, then poly_P over E - W epochs
    sd_D             constant, then a power-2 decay over the last D + 1 epochs
    wsd_W_D          warm-up over W epochs, constant, then a power-2 decay over the last D + 1
    cosine_W         linear warm-up from min_lr to lr over W epochs (cosine = cosine_0), then
                     cosine annealing to min_lr at epoch E (the Discogs-VINet-MIREX recipe)
    step_F_E1_E2...  lr x F from epoch E1 (counted from 0), x F again from E2, ... (MOVE:
                     step_0.2_80_100)
"""

import math

import torch

from lib import config, schema

OPTIMIZERS, SCHEDULES = schema.OPTIMIZERS, schema.SCHEDULES


def get_optimizer(conf, params):
    """conf: ``training.optim`` (name, lr, wd; see ``schema.OptimConfig``)."""
    conf = config.typed(schema.OptimConfig, conf, prefix="training.optim.")
    name = conf.name.lower()
    lr = conf.lr
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=conf.wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {conf.name!r}; valid: {', '.join(OPTIMIZERS)}")


def _parse(spec):
    """(name, [numbers]) of a schedule name that the schema's grammar accepts (which also gives
    each its count of numbers); a ``ValueError`` naming what is valid otherwise."""
    problem = schema.schedule_problem(spec)
    if problem:
        raise ValueError(f"training.optim.sched={spec!r} {problem}")
    name, *args = str(spec).split("_")
    return name, [float(a) for a in args]


def lr_multiplier(spec, epochs, warm_factor=0.005, min_ratio=0.0):
    """The function epoch -> lr / base lr of a non-plateau schedule (``min_ratio`` = min_lr / lr,
    used by cosine)."""
    name, args = _parse("flat" if spec is None else spec)

    def warmup(epoch, length):
        return warm_factor + (1 - warm_factor) * min(epoch, length) / length

    def decay(epoch, start, length, power):
        return (1 - min(max(epoch - start, 0), length) / length) ** power

    if name == "flat":
        return lambda e: 1.0
    if name == "poly":
        return lambda e: decay(e, 0, epochs, args[0])
    if name == "warmpoly":
        warm, power = int(args[0]), args[1]
        if epochs <= warm:
            raise ValueError(f"{spec}: numepochs ({epochs}) must exceed the warm-up ({warm})")
        return lambda e: (
            warmup(e, max(1, warm)) if e < warm else decay(e, warm, epochs - warm, power)
        )
    if name == "sd":
        length = int(args[0]) + 1
        return lambda e: decay(e, epochs - length, length, 2)
    if name == "wsd":
        warm, length = int(args[0]), int(args[1]) + 1
        if epochs <= warm + length:
            raise ValueError(f"{spec}: numepochs ({epochs}) must exceed {warm} + {length} epochs")
        return lambda e: (
            warmup(e, max(1, warm)) if e < warm else decay(e, epochs - length, length, 2)
        )
    if name == "cosine":
        warm = int(args[0]) if args else 0

        def cosine(e):
            if e < warm:
                return min_ratio + (1 - min_ratio) * e / warm
            progress = min(e - warm, epochs - warm) / max(1, epochs - warm)
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return cosine
    if name == "step":
        factor, milestones = args[0], sorted(int(m) for m in args[1:])
        return lambda e: factor ** sum(e >= m for m in milestones)
    raise ValueError(f"training.optim.sched={spec!r}: plateau_N is stepped on the monitor, not "
                     "by epoch")


def get_scheduler(conf, optimizer, epochs, mode="max", warm_factor=0.005, plateau_factor=0.2):
    """conf: ``training.optim`` (sched, lr, min_lr); mode: direction of the monitored quantity.
    Returns (scheduler, steps_on_metric)."""
    conf = config.typed(schema.OptimConfig, conf, prefix="training.optim.")
    spec = conf.sched
    name, args = _parse("flat" if spec is None else spec)
    if name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=plateau_factor, patience=max(0, int(args[0]) - 1)
        )
        return sched, True
    ratio = conf.min_lr / conf.lr if conf.lr > 0 else 0.0
    multiplier = lr_multiplier(spec, epochs, warm_factor, ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier), False
