"""Pieces of the training loop that train.py strings together: seeding, samplers, batch layout,
cross-rank gathering, validation retrieval metrics, and resume logic."""

import math
import os
import random

import numpy as np
import torch
from omegaconf import OmegaConf

from lib import config
from lib import eval as evaluation
from lib.checkpoint import CheckpointError, load_checkpoint
from lib.config import ConfigError

METRIC_KEYS = ("m_MAP", "m_MR1", "m_ARP", "m_COMP")


def seed_epoch(seed, epoch, rank):
    """Seed every generator from (seed, epoch, rank): each rank draws its own augmentations, and
    an epoch is the same whether or not the run was interrupted before it."""
    value = (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(rank) * 104_729) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


class ShardSampler(torch.utils.data.Sampler):
    """Rank r of w takes items r, r + w, r + 2w, ...: every item once over all ranks, without the
    duplicates a DistributedSampler adds to equalise the shards (used for evaluation)."""

    def __init__(self, size, num_replicas=1, rank=0):
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def stack_versions(batch):
    """Dataset batch [cliques (B,), ids_1 (B,), audio_1 (B, T), ids_2, audio_2, ...] ->
    version-major (cliques (nB,), ids (nB,), audio (nB, T))."""
    nversions = (len(batch) - 1) // 2
    cliques = batch[0].repeat(nversions)
    ids = torch.cat(list(batch[1::2]))
    audio = torch.cat(list(batch[2::2]))
    return cliques, ids, audio


def gather_rows(fabric, tensor):
    """Concatenate ``tensor`` (N_rank, ...) of every rank along dim 0; N_rank may differ."""
    if fabric.world_size == 1:
        return tensor
    size = torch.tensor([tensor.size(0)], device=tensor.device)
    sizes = fabric.all_gather(size).view(-1).tolist()
    padded = torch.zeros(
        (max(sizes),) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device
    )
    padded[: tensor.size(0)] = tensor
    gathered = fabric.all_gather(padded)
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


def retrieval_metrics(model, q_cliques, q_ids, q_z, c_cliques, c_ids, c_z, redux=None):
    """Per-query {"m_MAP": AP, "m_MR1": rank of first relevant, "m_ARP": ARP in %, "m_COMP":
    sqrt(ARP * (1 - AP))} as float64 (Q,) tensors, NaN where a query has no relevant candidate."""
    ap, r1, arp = evaluation.compute(
        model, q_cliques, q_ids, q_z, c_cliques, c_ids, c_z, redux_strategy=redux
    )
    return {"m_MAP": ap, "m_MR1": r1, "m_ARP": arp, "m_COMP": torch.sqrt(arp * (1 - ap))}


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
