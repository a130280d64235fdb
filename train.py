"""Train a model (CLEWS or a baseline) with Lightning Fabric on CPU, one GPU, many GPUs or nodes.

    python train.py jobname=shs-clews conf=config/shs-clews.yaml fabric.ngpus=2
    python train.py jobname=demo conf=config/demo-clews.yaml fabric.accelerator=cpu

Any config key can be overridden with key=value. The run folder logs/<jobname>/ receives the
resolved configuration.yaml, checkpoint_last.ckpt (every epoch), checkpoint_best.ckpt (on
improvement of training.monitor), checkpoint_epoch<N>.ckpt (every training.save_freq epochs, and
checkpoint_epoch0.ckpt with the starting weights) and TensorBoard event files. Running the same
command again resumes from checkpoint_last.ckpt.

With ssl.method set (contrastive, byol, barlow, vicreg, dino, clews) the same loop pre-trains the
model's encoder without labels (lib/ssl.py) on two views of every training track, and also writes
encoder.pt (the encoder's weights, no heads), the start of a fine-tune: checkpoint=.../encoder.pt.
"""

import os
import sys

import torch
from omegaconf import OmegaConf

from lib import cli, distributed, precision, steps, training
from lib.augmentations import Augment
from lib.config import ConfigError, load_config
from lib.files import atomic_write, remove_stale_temporaries
from lib.model_base import build_model
from lib.optim import get_optimizer, get_scheduler


def start_run_folder(fabric, conf, log_dir):
    """Rank 0 clears what a killed run left half-written and writes the resolved config."""
    if fabric.is_global_zero:
        for path in remove_stale_temporaries(log_dir):
            fabric.print(f"Removed {path}, left by a run killed while writing it")
        yaml_text = OmegaConf.to_yaml(conf)
        path = os.path.join(log_dir, "configuration.yaml")
        atomic_write(path, lambda handle: handle.write(yaml_text), text=True)
    fabric.print("-" * 65 + "\n" + OmegaConf.to_yaml(conf) + "-" * 65)


def trainable_model(conf, printer):
    """The config's model, initialised alike on every rank; refused when it cannot train."""
    training.seed_epoch(conf.seed, -1, 0)
    try:
        net = build_model(conf.model, sr=conf.data.samplerate)
    except ValueError as err:  # e.g. an unknown mining strategy
        raise ConfigError(str(err)) from err
    if not net.trainable:
        raise ConfigError(
            f"model.name={conf.model.name}: a frozen, pre-trained embedding that train.py does "
            "not train (evaluate it with test.py, embed with inference.py)"
        )
    printer(f"Model {conf.model.name}: {sum(p.numel() for p in net.parameters()):,} parameters")
    return net


def main(argv):
    # setup
    conf = load_config(argv)
    # a precision the device cannot compute is a usage error, before anything starts
    mixed = precision.check(conf.fabric.precision, conf.fabric.accelerator, "fabric.precision")
    conf.data.path = conf.path
    log_dir = os.path.join(conf.path.logs, conf.jobname)
    logger = distributed.make_logger(conf.logger, log_dir, conf.jobname)
    fabric = distributed.make_fabric(conf.fabric, mixed, loggers=logger, broadcast_buffers=False)
    start_run_folder(fabric, conf, log_dir)
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("medium")
    net = trainable_model(conf, fabric.print)
    step = steps.make_step(conf, net, Augment(conf.augmentations, sr=conf.data.samplerate))
    if conf.ssl.method != "none":
        fabric.print(f"Self-supervised pre-training: {conf.ssl.method}, {conf.ssl.views} views")
    optim = get_optimizer(conf.training.optim, step.parameters())
    sched, on_metric = get_scheduler(
        conf.training.optim, optim, conf.training.numepochs, mode=conf.training.monitor.mode
    )
    # resume
    kind, progress = training.resume(conf, log_dir, step, optim, sched, fabric.print)
    # fit
    trainer = training.Trainer(fabric, conf, step, optim, sched, on_metric, log_dir)
    return trainer.fit(kind, progress)


USAGE = "python train.py jobname=NAME conf=config/<dataset>-<model>.yaml [key=value ...]"

if __name__ == "__main__":
    sys.exit(cli.run(main, help_text=lambda: cli.train_help(USAGE, __doc__.strip())))
