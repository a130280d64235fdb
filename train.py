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

import math
import os
import sys
import time
from datetime import timedelta

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from lib import cli, precision, ssl, training
from lib.augmentations import Augment
from lib.checkpoint import load_model_state, optimizer_state, save_checkpoint
from lib.config import ConfigError, load_config
from lib.dataset import BadAudioLog, Dataset
from lib.files import atomic_write, remove_stale_temporaries
from lib.metadata import DatasetError
from lib.model_base import build_model
from lib.optim import get_optimizer, get_scheduler


class NonFiniteLoss(Exception):
    pass


def make_fabric(conf, log_dir, mixed):
    """Fabric for the run; ``mixed``: Fabric's name of the checked ``fabric.precision``."""
    # imported here, not at the top: Lightning takes seconds to import and a bad argument or
    # file should be reported at once
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    world = conf.fabric.ngpus * conf.fabric.nnodes
    strategy = "auto"
    if world > 1:
        strategy = DDPStrategy(broadcast_buffers=False, timeout=timedelta(minutes=30))
    fabric = Fabric(
        accelerator=conf.fabric.accelerator,
        devices=conf.fabric.ngpus,
        num_nodes=conf.fabric.nnodes,
        strategy=strategy,
        precision=mixed,
        loggers=make_logger(conf, log_dir),
    )
    fabric.launch()
    return fabric


def make_logger(conf, log_dir):
    """``logger``: TensorBoard event files (default) or metrics.csv in the run folder, or a
    wandb run (the fork's project "dvi2", named after the job)."""
    if conf.logger == "csv":
        from lightning.fabric.loggers import CSVLogger

        return CSVLogger(root_dir=log_dir, name="", version="")
    if conf.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project="dvi2", name=conf.jobname, save_dir=log_dir)
    from lightning.fabric.loggers import TensorBoardLogger

    return TensorBoardLogger(root_dir=log_dir, name="", version="", default_hp_metric=False)


def make_loaders(conf, fabric, log_dir):
    common = {
        "limit_cliques": conf.limit_num,
        "bad_audio": BadAudioLog(os.path.join(log_dir, "bad_audio.tsv")),
    }
    views = None if conf.ssl.method == "none" else conf.ssl.views
    train_set = Dataset(
        conf.data, "train", augment=True, views=views, view_offset=conf.ssl.view_offset, **common
    )
    valid_set = Dataset(conf.data, "valid", augment=False, **common)
    batch = conf.training.batchsize
    if len(train_set) < batch * fabric.world_size:
        raise DatasetError(
            f"{conf.data.path.meta}: the train split has {len(train_set)} versions, fewer than "
            f"one batch ({batch} x {fabric.world_size} processes); lower training.batchsize"
        )
    # the same seed on every rank: the shards of an epoch partition the training set
    sampler = torch.utils.data.DistributedSampler(
        train_set,
        fabric.world_size,
        fabric.global_rank,
        shuffle=True,
        seed=conf.seed,
        drop_last=True,
    )
    pin = fabric.device.type == "cuda"
    workers = conf.data.nworkers
    train_loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin,
    )
    valid_loader = torch.utils.data.DataLoader(
        valid_set,
        batch_size=batch,
        sampler=training.ShardSampler(len(valid_set), fabric.world_size, fabric.global_rank),
        num_workers=workers,
        pin_memory=pin,
    )
    # not wrapped by Fabric: its wrapper would reset the sampler's epoch to the number of passes
    # made by this process, so a resumed run would repeat the first epoch's order
    return train_loader, valid_loader, sampler


def run_batch(model, net, augment, batch, train, valid_hop):
    """One batch: stack versions, augment (training), CQT shingles, embed, loss.
    Returns (cliques, ids, z, loss, logs); ``net`` is the bare module, ``model`` its wrapper."""
    cliques, ids, audio = training.stack_versions(batch)
    with torch.inference_mode():
        if train:
            audio = augment.waveform(audio)
        h = net.prepare(audio, shingle_hop=None if train else valid_hop)
        if train:
            h = augment.cqt(h)
    z, extra = model.embed(h.clone())
    loss, logs = net.loss(cliques, ids, z, extra=extra)
    return cliques, ids, z, loss, logs


def run_pretext_batch(model, net, augment, batch, epoch):
    """One self-supervised batch: the views of every track (version-major, as the dataset
    gives them), augmented each on its own, training shingles, the pretext's loss and logs.
    ``model`` is the wrapped ``ssl.PretextStep``, ``net`` the bare encoder."""
    _, _, audio = training.stack_versions(batch)
    nviews = (len(batch) - 1) // 2
    with torch.inference_mode():
        h = augment.cqt(net.prepare(augment.waveform(audio)))
    return model(h.clone(), nviews, epoch)


def all_finite(fabric, value):
    flag = torch.tensor([1.0 if math.isfinite(float(value)) else 0.0], device=fabric.device)
    return bool(fabric.all_reduce(flag, reduce_op="min").item() > 0)


def train_epoch(fabric, model, net, optim, augment, loader, conf, epoch, pretext=None):
    """One epoch; with ``pretext`` (``model`` is then the wrapped ``ssl.PretextStep``) the
    self-supervised loss, and the teacher's update after each step."""
    model.train()
    if conf.training.freeze == "encoder":  # a linear probe: frozen statistics too
        net.eval()
        net.get_submodule(net.projection_module).train()
    sums, count = {}, 0
    limit = conf.limit_batches
    total = len(loader) if limit is None else min(len(loader), limit)
    bar = tqdm(total=total, ncols=80, ascii=True, disable=not fabric.is_global_zero, leave=False)
    seen = []
    for i, batch in enumerate(loader):
        if i >= total:
            break
        seen += batch[1].tolist()
        batch = fabric.to_device(batch)
        optim.zero_grad(set_to_none=True)
        if pretext is None:
            _, _, _, loss, logs = run_batch(model, net, augment, batch, True, None)
        else:
            loss, logs = run_pretext_batch(model, net, augment, batch, epoch)
        if not all_finite(fabric, loss.detach()):
            raise NonFiniteLoss(f"loss is {loss.item()} at batch {i + 1}")
        fabric.backward(loss)
        optim.step()
        if pretext is not None:
            pretext.after_step(net, epoch * total + i)
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        bar.update(1)
        bar.set_postfix_str(f"L={sums['l_main'] / count:.3f}")
    bar.close()
    log_items(fabric, seen)
    return {k: v / max(count, 1) for k, v in sums.items()}


def log_items(fabric, song_ids):
    """With CLEWS_LOG_ITEMS=<folder>, each rank appends the song ids of the anchors it trained on
    this epoch to <folder>/items_rank<r>.txt (one line per epoch): a check of the sharding."""
    folder = os.environ.get("CLEWS_LOG_ITEMS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"items_rank{fabric.global_rank}.txt"), "a") as handle:
            handle.write(" ".join(map(str, song_ids)) + "\n")


@torch.inference_mode()
def valid_epoch(fabric, model, net, loader, conf):
    model.eval()
    sums, count = {}, 0
    cliques, ids, embeddings = [], [], []
    valid_hop = net.get_shingle_params()[1] / 2
    for batch in loader:
        batch = fabric.to_device(batch)
        nb = batch[0].size(0)
        c, i, z, loss, logs = run_batch(model, net, None, batch, False, valid_hop)
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        # version 1 of each item: every validation song once, from its start
        cliques.append(c[:nb])
        ids.append(i[:nb])
        embeddings.append(z[:nb].float())
    local_c, local_i, local_z = torch.cat(cliques), torch.cat(ids), torch.cat(embeddings)
    all_c = training.gather_rows(fabric, local_c)
    all_i = training.gather_rows(fabric, local_i)
    all_z = training.gather_rows(fabric, local_z)
    metrics = training.retrieval_metrics(net, local_c, local_i, local_z, all_c, all_i, all_z)
    out = {k: v / max(count, 1) for k, v in sums.items()}
    for key, values in metrics.items():
        out[key] = training.mean_finite(
            training.gather_rows(fabric, values.to(fabric.device)).cpu()
        )
    return out


def mean_over_ranks(fabric, logs):
    if fabric.world_size == 1:
        return logs
    keys = sorted(logs)
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=fabric.device)
    values = fabric.all_reduce(values, reduce_op="mean")
    return dict(zip(keys, values.tolist()))


def report_scores(scores):
    """'key = value' pairs of an epoch's report line, in sorted key order."""
    return ",  ".join(f"{k} = {v:.3f}" for k, v in sorted(scores.items()))


def error(fabric, text):
    """The run's error line, once (rank 0), on stderr."""
    if fabric.is_global_zero:
        print(f"error: {text}", file=sys.stderr, flush=True)


def checkpoint_state(net, optim, sched, conf, epoch, cost_best, pretext=None):
    """What a checkpoint holds (the original's keys), after ``epoch`` finished epochs; a
    self-supervised run keeps its heads and teacher apart, under ``ssl``."""
    state = {
        "model": net.state_dict(),
        "optim": optim.state_dict(),
        "sched": sched.state_dict(),
        "conf": conf,
        "epoch": epoch,
        "lr": optim.param_groups[0]["lr"],
        "cost_best": cost_best,
    }
    if pretext is not None:
        state["ssl"] = pretext.state_dict()
    return state


def frozen_encoder(net, conf):
    """training.freeze=encoder: every parameter but the model's projection stops training."""
    if conf.training.freeze == "none":
        return
    if conf.training.freeze != "encoder":
        raise ConfigError(f"training.freeze={conf.training.freeze!r}: none or encoder")
    if net.projection_module is None:
        raise ConfigError(f"training.freeze=encoder: model.name={conf.model.name} declares no "
                          "projection to train alone")
    if conf.ssl.method != "none":
        raise ConfigError("training.freeze=encoder with ssl.method: a pre-training trains the "
                          "encoder")
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith(net.projection_module + "."))


def main(argv):
    conf = load_config(argv)
    # a precision the device cannot compute is a usage error, before anything starts
    mixed = precision.check(conf.fabric.precision, conf.fabric.accelerator, "fabric.precision")
    conf.data.path = conf.path
    log_dir = os.path.join(conf.path.logs, conf.jobname)
    fabric = make_fabric(conf, log_dir, mixed)
    printer = fabric.print
    if fabric.is_global_zero:
        for path in remove_stale_temporaries(log_dir):
            printer(f"Removed {path}, left by a run killed while writing it")
        yaml_text = OmegaConf.to_yaml(conf)
        path = os.path.join(log_dir, "configuration.yaml")
        atomic_write(path, lambda handle: handle.write(yaml_text), text=True)
    printer("-" * 65 + "\n" + OmegaConf.to_yaml(conf) + "-" * 65)
    paths = {n: os.path.join(log_dir, f"checkpoint_{n}.ckpt") for n in ("last", "best")}
    paths["encoder"] = os.path.join(log_dir, "encoder.pt")

    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("medium")
    training.seed_epoch(conf.seed, -1, 0)  # identical initialisation on every rank
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
    frozen_encoder(net, conf)
    pretext = None
    if conf.ssl.method != "none":
        try:
            pretext = ssl.Pretext(
                conf.ssl.method, net, total_steps=0, hidden=conf.ssl.hidden, out=conf.ssl.out
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err
        printer(f"Self-supervised pre-training: {conf.ssl.method}, {conf.ssl.views} views")
    # every parameter, as the original (its optimiser states count CoverHunter-C's frozen bias
    # too), unless the encoder is frozen
    params = list(net.parameters())
    if conf.training.freeze == "encoder":
        params = [p for p in params if p.requires_grad]
    params += [] if pretext is None else pretext.head_parameters()
    optim = get_optimizer(conf.training.optim, params)
    monitor, mode = conf.training.monitor.quantity, conf.training.monitor.mode
    epochs = conf.training.numepochs
    sched, on_metric = get_scheduler(conf.training.optim, optim, epochs, mode=mode)
    epoch, cost_best = 0, (-math.inf if mode == "max" else math.inf)

    kind, state, source = training.find_start_state(conf, paths["last"])
    if kind == "resume":
        training.check_model_section(source, state["conf"].model, conf.model)
        load_model_state(net, state)
        if pretext is not None:
            if "ssl" not in state:
                raise ConfigError(f"{source}: no ssl state to resume a pre-training from")
            pretext.load_state_dict(state["ssl"])
        optim.load_state_dict(optimizer_state(net, state))
        sched.load_state_dict(state["sched"])
        epoch, cost_best = state["epoch"], state["cost_best"]
        printer(f"Resumed after epoch {epoch} (best {monitor} = {cost_best:.4f})")
    elif kind == "finetune":
        load_model_state(net, state, source=source)
        printer(f"Fine-tuning from the weights in {source}")

    if pretext is None:
        model, optim = fabric.setup(net, optim)
        model.mark_forward_method("embed")
        valid_model = model
    else:
        model, optim = fabric.setup(ssl.PretextStep(net, pretext), optim)
        valid_model = net  # evaluation needs no gradient synchronisation
    train_loader, valid_loader, sampler = make_loaders(conf, fabric, log_dir)
    if pretext is not None:  # the EMA momentum spans the real run
        per_epoch = len(train_loader)
        if conf.limit_batches is not None:
            per_epoch = min(per_epoch, conf.limit_batches)
        pretext.total_steps = epochs * per_epoch
    training.check_input_kind(net, train_loader.dataset, valid_loader.dataset)
    training.check_classifier_size(net, train_loader.dataset, valid_loader.dataset)
    augment = Augment(conf.augmentations, sr=conf.data.samplerate)
    min_lr = conf.training.optim.min_lr
    save_freq = conf.training.save_freq

    try:
        if kind != "resume":  # the untrained (or pre-trained) model's scores, logged as epoch 0
            training.seed_epoch(conf.seed, -1, fabric.global_rank)
            baseline = valid_epoch(fabric, valid_model, net, valid_loader, conf)
            baseline = mean_over_ranks(fabric, baseline)
            fabric.log_dict({f"valid/{k}": v for k, v in baseline.items()}, step=0)
            text = report_scores({k: baseline[k] for k in ("l_main",) + training.METRIC_KEYS})
            printer(f"[{time.strftime('%H:%M:%S')}] Epoch 0/{epochs}:  {text}  (before training)")
            if save_freq and fabric.is_global_zero:  # the starting weights, to compare against
                state = checkpoint_state(net, optim, sched, conf, 0, cost_best, pretext)
                save_checkpoint(state, os.path.join(log_dir, "checkpoint_epoch0.ckpt"))
        else:  # a record now, so the log of this call spans its first epoch too
            fabric.log_dict({"resumed_after_epoch": epoch}, step=epoch)

        while epoch < epochs:
            start = time.time()
            training.seed_epoch(conf.seed, epoch, fabric.global_rank)
            sampler.set_epoch(epoch)
            lr = optim.param_groups[0]["lr"]
            try:
                train_logs = train_epoch(
                    fabric, model, net, optim, augment, train_loader, conf, epoch, pretext
                )
            except NonFiniteLoss as err:
                error(
                    fabric, f"NaN or inf reached ({err}); stopped, the last good checkpoint is kept"
                )
                return 1
            valid_logs = valid_epoch(fabric, valid_model, net, valid_loader, conf)
            train_logs = mean_over_ranks(fabric, train_logs)
            valid_logs = mean_over_ranks(fabric, valid_logs)
            if not all(
                math.isfinite(v) for v in list(train_logs.values()) + list(valid_logs.values())
            ):
                error(
                    fabric,
                    "NaN or inf in the epoch's averages; stopped, the last good checkpoint is kept",
                )
                return 1
            value = valid_logs[monitor]
            improved = value > cost_best if mode == "max" else value < cost_best
            cost_best = value if improved else cost_best
            sched.step(value) if on_metric else sched.step()
            new_lr = optim.param_groups[0]["lr"]
            epoch += 1
            state = checkpoint_state(net, optim, sched, conf, epoch, cost_best, pretext)
            if fabric.is_global_zero:
                save_checkpoint(state, paths["last"])
                if pretext is not None:  # the encoder alone: weights only, a fine-tune's start
                    save_checkpoint({"model": state["model"]}, paths["encoder"])
                if improved:
                    save_checkpoint(state, paths["best"])
                if save_freq and epoch % save_freq == 0:
                    save_checkpoint(state, os.path.join(log_dir, f"checkpoint_epoch{epoch}.ckpt"))
            fabric.barrier()
            scalars = {"hpar/epoch": epoch, "hpar/lr": lr}
            scalars.update({f"train/{k}": v for k, v in train_logs.items()})
            scalars.update({f"valid/{k}": v for k, v in valid_logs.items()})
            fabric.log_dict(scalars, step=epoch)
            scores = {"l_main": valid_logs["l_main"], "l_main_t": train_logs["l_main"]}
            scores.update({k: valid_logs[k] for k in training.METRIC_KEYS})
            text = report_scores(scores)
            width = len(str(epochs))
            line = f"[{time.strftime('%H:%M:%S')}] Epoch {epoch:>{width}}/{epochs}:  {text}"
            line += f"  ({time.time() - start:.0f} s)"
            if new_lr != lr:
                line += f"  (lr={new_lr:.1e})"
            printer(line + ("  *" if improved else ""))
            if new_lr < min_lr:
                printer("Min lr reached. Stop.")
                break
        printer("Done.")
        return 0
    finally:
        # TensorBoard writes asynchronously: flush the last epoch's scalars before exiting
        for logger in fabric.loggers:
            logger.finalize("success")


USAGE = "python train.py jobname=NAME conf=config/<dataset>-<model>.yaml [key=value ...]"

if __name__ == "__main__":
    sys.exit(cli.run(main, help_text=lambda: cli.train_help(USAGE, __doc__.strip())))
