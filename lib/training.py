"""The training loop (``fit``) that train.py starts, for either kind of step of ``lib/steps.py``:
loaders, epochs of training and validation, checkpoints and their resume, logs and the report
line of every epoch; and its pieces: seeding, validation retrieval metrics, start state."""

import math
import os
import random
import sys
import time

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from lib import config, distributed, retrieval
from lib.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    optimizer_state,
    save_checkpoint,
)
from lib.config import ConfigError
from lib.dataset import BadAudioLog, Dataset
from lib.metadata import DatasetError
from lib.steps import supervised_batch

METRIC_KEYS = ("m_MAP", "m_MR1", "m_ARP", "m_COMP")
LAST_CHECKPOINT = "checkpoint_last.ckpt"  # in the run folder: what running again resumes


def seed_epoch(seed, epoch, rank):
    """Seed every generator from (seed, epoch, rank): each rank draws its own augmentations, and
    an epoch is the same whether or not the run was interrupted before it."""
    value = (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(rank) * 104_729) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def retrieval_metrics(model, q_cliques, q_ids, q_z, c_cliques, c_ids, c_z, redux=None):
    """Per-query {"m_MAP": AP, "m_MR1": rank of first relevant, "m_ARP": ARP in %, "m_COMP":
    sqrt(ARP * (1 - AP))} as float64 (Q,) tensors, NaN where a query has no relevant candidate;
    computed by the engine that test.py uses, on the embeddings' device."""
    queries = retrieval.Embeddings(q_cliques.cpu(), q_ids.cpu(), q_z, None)
    candidates = retrieval.Embeddings(c_cliques.cpu(), c_ids.cpu(), c_z, None)
    _, per_query, _, _ = retrieval.evaluate(
        model, queries, candidates, redux=redux, device=q_z.device, ks=()
    )
    ap, arp = per_query["AP"], per_query["ARP"]
    comp = torch.sqrt(arp * (1 - ap))
    return {"m_MAP": ap, "m_MR1": per_query["R1"], "m_ARP": arp, "m_COMP": comp}


def mean_finite(values):
    values = values[~torch.isnan(values)]
    return values.mean().item() if values.numel() else math.nan


def check_model_section(path, stored, current):
    """Resuming with another architecture would silently mix weights: refuse, naming the keys."""
    # the stored section typed as the current one (a checkpoint of the original code has no
    # defaulted keys): only values that differ count
    stored = config.typed(OmegaConf.get_type(current), stored, source=path, prefix="model.")
    old = OmegaConf.to_container(stored, resolve=True)
    new = OmegaConf.to_container(current, resolve=True)
    if old == new:
        return
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    diffs = ", ".join(f"model.{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys[:5])
    raise CheckpointError(
        f"{path}: its model section differs from this run's ({diffs}); use another jobname "
        "to train a different model, or give the weights as checkpoint= to fine-tune"
    )


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def find_start_state(conf, last_path):
    """What to start from: (kind, state, path) with kind "resume" (full state: continue that run),
    "finetune" (weights only) or "scratch". The run's own last checkpoint wins over
    ``checkpoint=``, so restarting an interrupted fine-tune continues it."""
    if os.path.isfile(last_path):
        return "resume", load_checkpoint(last_path), last_path
    if conf.checkpoint:
        state = load_checkpoint(conf.checkpoint)
        return ("finetune" if set(state) == {"model"} else "resume"), state, conf.checkpoint
    return "scratch", None, None


def check_input_kind(model, *datasets):
    """The model takes what the datasets give: audio, or the pitch-class features of a feature
    dataset (``model.input: pcp``, MOVE); a ``ConfigError`` saying which before any batch."""
    for dataset in datasets:
        if dataset.input_kind != model.input_kind:
            given = "pitch-class features" if dataset.input_kind == "pcp" else "audio"
            raise ConfigError(
                f"split '{dataset.split}' of the metadata file holds {given} but the model takes "
                f"{model.input_kind}; a feature dataset needs a model with model.input=pcp "
                "(MOVE), an audio dataset model.input=audio"
            )


def check_classifier_size(model, *datasets):
    """Classifier models (``maxcliques``) need a row for every clique id they will see, the
    validation ones included (their ids follow the training ones): say so before training
    instead of failing at the first validation batch."""
    size = model.maxcliques
    if size is None:
        return
    largest = max(max(d.clique_id.values()) for d in datasets)
    if largest >= size:
        raise ConfigError(
            f"model.maxcliques={size} but clique ids go up to {largest} (train + valid "
            f"cliques); set model.maxcliques to at least {largest + 1}"
        )


###################################################################################################
# The loop
###################################################################################################


class NonFiniteLoss(Exception):
    pass


def make_loaders(conf, fabric, log_dir):
    """(train loader, valid loader, train sampler): the training split shuffled and sharded
    over the ranks by the epoch's seed (with the views of ``ssl.views`` in a pre-training), the
    validation split once over all ranks."""
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
        sampler=distributed.ShardSampler(len(valid_set), fabric.world_size, fabric.global_rank),
        num_workers=workers,
        pin_memory=pin,
    )
    # not wrapped by Fabric: its wrapper would reset the sampler's epoch to the number of passes
    # made by this process, so a resumed run would repeat the first epoch's order
    return train_loader, valid_loader, sampler


def batches_per_epoch(loader, limit):
    return len(loader) if limit is None else min(len(loader), limit)


def train_epoch(fabric, step, wrapped, optim, loader, epoch, limit):
    """One epoch of ``step`` (at most ``limit`` batches): {log name: mean over batches}."""
    step.train_mode(wrapped)
    sums, count = {}, 0
    total = batches_per_epoch(loader, limit)
    bar = tqdm(total=total, ncols=80, ascii=True, disable=not fabric.is_global_zero, leave=False)
    seen = []
    for i, batch in enumerate(loader):
        if i >= total:
            break
        seen += batch[1].tolist()
        batch = fabric.to_device(batch)
        optim.zero_grad(set_to_none=True)
        loss, logs = step.loss(wrapped, batch, epoch)
        if not distributed.all_finite(fabric, loss.detach()):
            raise NonFiniteLoss(f"loss is {loss.item()} at batch {i + 1}")
        fabric.backward(loss)
        optim.step()
        step.after_step(epoch * total + i)
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
def valid_epoch(fabric, model, net, loader):
    """The model's loss on the validation split and the retrieval metrics of its first version
    of every song (from its start, half-shingle hop) against all others, over all ranks."""
    model.eval()
    sums, count = {}, 0
    cliques, ids, embeddings = [], [], []
    valid_hop = net.get_shingle_params()[1] / 2
    for batch in loader:
        batch = fabric.to_device(batch)
        nb = batch[0].size(0)
        c, i, z, loss, logs = supervised_batch(model, net, None, batch, shingle_hop=valid_hop)
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        # version 1 of each item: every validation song once, from its start
        cliques.append(c[:nb])
        ids.append(i[:nb])
        embeddings.append(z[:nb].float())
    local_c, local_i, local_z = torch.cat(cliques), torch.cat(ids), torch.cat(embeddings)
    all_c = distributed.gather_rows(fabric, local_c)
    all_i = distributed.gather_rows(fabric, local_i)
    all_z = distributed.gather_rows(fabric, local_z)
    metrics = retrieval_metrics(net, local_c, local_i, local_z, all_c, all_i, all_z)
    out = {k: v / max(count, 1) for k, v in sums.items()}
    for key, values in metrics.items():
        gathered = distributed.gather_rows(fabric, values.to(fabric.device))
        out[key] = mean_finite(gathered.cpu())
    return distributed.mean_over_ranks(fabric, out)


def report_scores(scores):
    """'key = value' pairs of an epoch's report line, in sorted key order."""
    return ",  ".join(f"{k} = {v:.3f}" for k, v in sorted(scores.items()))


def error(fabric, text):
    """The run's error line, once (rank 0), on stderr."""
    if fabric.is_global_zero:
        print(f"error: {text}", file=sys.stderr, flush=True)


class Progress:
    """Where a run stands: finished ``epoch``s and the best monitored value ``cost_best``."""

    def __init__(self, mode, epoch=0, cost_best=None):
        self.mode = mode
        self.epoch = epoch
        if cost_best is None:
            cost_best = -math.inf if mode == "max" else math.inf
        self.cost_best = cost_best

    def improves(self, value):
        return value > self.cost_best if self.mode == "max" else value < self.cost_best


def resume(conf, log_dir, step, optim, sched, printer):
    """Start state of a run: its own last checkpoint in ``log_dir`` (continue it), else
    ``checkpoint=`` (a full state continues that run, weights only start a fine-tune), else
    scratch. Loads what applies into the model, the step, the optimiser and the schedule;
    returns (kind, Progress)."""
    kind, state, source = find_start_state(conf, os.path.join(log_dir, LAST_CHECKPOINT))
    progress = Progress(conf.training.monitor.mode)
    net = step.net
    if kind == "resume":
        check_model_section(source, state["conf"].model, conf.model)
        load_model_state(net, state)
        step.load_state(state, source)
        optim.load_state_dict(optimizer_state(net, state))
        sched.load_state_dict(state["sched"])
        progress = Progress(progress.mode, state["epoch"], state["cost_best"])
        monitor = conf.training.monitor.quantity
        printer(f"Resumed after epoch {progress.epoch} (best {monitor} = {progress.cost_best:.4f})")
    elif kind == "finetune":
        load_model_state(net, state, source=source)
        printer(f"Fine-tuning from the weights in {source}")
    return kind, progress


def save_epoch(fabric, state, log_dir, step, improved, save_freq):
    """Rank 0 writes checkpoint_last (and the step's side files), checkpoint_best when the
    monitored value improved, and checkpoint_epoch<N> every ``save_freq`` epochs."""
    if fabric.is_global_zero:
        save_checkpoint(state, os.path.join(log_dir, LAST_CHECKPOINT))
        for name, content in step.side_files(state).items():
            save_checkpoint(content, os.path.join(log_dir, name))
        if improved:
            save_checkpoint(state, os.path.join(log_dir, "checkpoint_best.ckpt"))
        epoch = state["epoch"]
        if save_freq and epoch % save_freq == 0:
            save_checkpoint(state, os.path.join(log_dir, f"checkpoint_epoch{epoch}.ckpt"))
    fabric.barrier()


class Trainer:
    """The loop of one run: ``step`` (``lib.steps``) optimised by ``optim`` on the training
    split, the learning rate scheduled by ``sched`` (``on_metric``: stepped with the monitored
    value), validation, logs and checkpoints in ``log_dir`` every epoch."""

    def __init__(self, fabric, conf, step, optim, sched, on_metric, log_dir):
        self.fabric, self.conf, self.step = fabric, conf, step
        self.sched, self.on_metric, self.log_dir = sched, on_metric, log_dir
        self.wrapped, self.optim = fabric.setup(step.module(), optim)
        for name in step.forward_methods:
            self.wrapped.mark_forward_method(name)
        self.valid_model = step.validation_module(self.wrapped)
        self.train_loader, self.valid_loader, self.sampler = make_loaders(conf, fabric, log_dir)
        per_epoch = batches_per_epoch(self.train_loader, conf.limit_batches)
        step.begin(conf.training.numepochs * per_epoch)
        check_input_kind(step.net, self.train_loader.dataset, self.valid_loader.dataset)
        check_classifier_size(step.net, self.train_loader.dataset, self.valid_loader.dataset)

    def fit(self, kind, progress):
        """Train from ``progress`` to ``training.numepochs`` (or the minimum learning rate); 0
        when done, 1 when a loss stopped being finite (the last good checkpoint kept). ``kind``:
        how the run started (see ``resume``)."""
        fabric = self.fabric
        try:
            if kind != "resume":
                self.baseline(progress)
            else:  # a record now, so the log of this call spans its first epoch too
                fabric.log_dict({"resumed_after_epoch": progress.epoch}, step=progress.epoch)
            while progress.epoch < self.conf.training.numepochs:
                status = self.epoch(progress)
                if status == 1:
                    return 1
                if status == 0:
                    break
            fabric.print("Done.")
            return 0
        finally:
            # TensorBoard writes asynchronously: flush the last epoch's scalars before exiting
            for logger in fabric.loggers:
                logger.finalize("success")

    def state(self, progress):
        """What a checkpoint holds (the original's keys) at ``progress``, and what the step
        keeps besides (a pre-training's heads and teacher under ``ssl``)."""
        return {
            "model": self.step.net.state_dict(),
            "optim": self.optim.state_dict(),
            "sched": self.sched.state_dict(),
            "conf": self.conf,
            "epoch": progress.epoch,
            "lr": self.optim.param_groups[0]["lr"],
            "cost_best": progress.cost_best,
            **self.step.state(),
        }

    def baseline(self, progress):
        """The untrained (or pre-trained) model's scores, logged as epoch 0, and its weights in
        checkpoint_epoch0.ckpt with training.save_freq, to compare against."""
        fabric, conf = self.fabric, self.conf
        seed_epoch(conf.seed, -1, fabric.global_rank)
        scores = valid_epoch(fabric, self.valid_model, self.step.net, self.valid_loader)
        fabric.log_dict({f"valid/{k}": v for k, v in scores.items()}, step=0)
        text = report_scores({k: scores[k] for k in ("l_main",) + METRIC_KEYS})
        epochs = conf.training.numepochs
        fabric.print(f"[{time.strftime('%H:%M:%S')}] Epoch 0/{epochs}:  {text}  (before training)")
        if conf.training.save_freq and fabric.is_global_zero:
            path = os.path.join(self.log_dir, "checkpoint_epoch0.ckpt")
            save_checkpoint(self.state(progress), path)

    def epoch(self, progress):
        """Train, validate, schedule, save and report one epoch; None to go on, 0 to stop (the
        minimum learning rate reached), 1 to fail (not finite)."""
        fabric, conf, optim = self.fabric, self.conf, self.optim
        start = time.time()
        seed_epoch(conf.seed, progress.epoch, fabric.global_rank)
        self.sampler.set_epoch(progress.epoch)
        lr = optim.param_groups[0]["lr"]
        try:
            train_logs = train_epoch(fabric, self.step, self.wrapped, optim, self.train_loader,
                                     progress.epoch, conf.limit_batches)
        except NonFiniteLoss as err:
            error(fabric, f"NaN or inf reached ({err}); stopped, the last good checkpoint is kept")
            return 1
        valid_logs = valid_epoch(fabric, self.valid_model, self.step.net, self.valid_loader)
        train_logs = distributed.mean_over_ranks(fabric, train_logs)
        if not all(map(math.isfinite, list(train_logs.values()) + list(valid_logs.values()))):
            error(fabric, "NaN or inf in the epoch's averages; stopped, the last good checkpoint "
                  "is kept")
            return 1
        value = valid_logs[conf.training.monitor.quantity]
        improved = progress.improves(value)
        progress.cost_best = value if improved else progress.cost_best
        self.sched.step(value) if self.on_metric else self.sched.step()
        new_lr = optim.param_groups[0]["lr"]
        progress.epoch += 1
        save_epoch(fabric, self.state(progress), self.log_dir, self.step, improved,
                   conf.training.save_freq)
        scalars = {"hpar/epoch": progress.epoch, "hpar/lr": lr}
        scalars.update({f"train/{k}": v for k, v in train_logs.items()})
        scalars.update({f"valid/{k}": v for k, v in valid_logs.items()})
        fabric.log_dict(scalars, step=progress.epoch)
        scores = {"l_main": valid_logs["l_main"], "l_main_t": train_logs["l_main"]}
        scores.update({k: valid_logs[k] for k in METRIC_KEYS})
        epochs = conf.training.numepochs
        line = f"[{time.strftime('%H:%M:%S')}] Epoch {progress.epoch:>{len(str(epochs))}}/"
        line += f"{epochs}:  {report_scores(scores)}  ({time.time() - start:.0f} s)"
        if new_lr != lr:
            line += f"  (lr={new_lr:.1e})"
        fabric.print(line + ("  *" if improved else ""))
        if new_lr < conf.training.optim.min_lr:
            fabric.print("Min lr reached. Stop.")
            return 0
        return None
