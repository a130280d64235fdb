"""The processes of a run (Lightning Fabric: CPU, one GPU, many GPUs or nodes) and what they
share: starting them, gathering rows of every rank, averaging logs over ranks, agreeing that a
loss is finite, and the sampler that shards an evaluation without duplicates."""

import math
from datetime import timedelta

import torch


def make_fabric(section, mixed, loggers=None, timeout_minutes=30, broadcast_buffers=True):
    """Fabric for ``section`` (a config's ``fabric``: nnodes, ngpus, accelerator), launched;
    ``mixed``: Fabric's name of the checked precision. ``broadcast_buffers`` False keeps DDP
    from overwriting each rank's buffers (BatchNorm statistics) with rank 0's at every step."""
    # imported here, not at the top: Lightning takes seconds to import and a bad argument or
    # file should be reported at once
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    world = section.ngpus * section.nnodes
    strategy = "auto"
    if world > 1:
        strategy = DDPStrategy(
            broadcast_buffers=broadcast_buffers, timeout=timedelta(minutes=timeout_minutes)
        )
    fabric = Fabric(
        accelerator=section.accelerator,
        devices=section.ngpus,
        num_nodes=section.nnodes,
        strategy=strategy,
        precision=mixed,
        loggers=loggers,
    )
    fabric.launch()
    return fabric


def make_logger(kind, log_dir, jobname):
    """``kind`` (the config's ``logger``): TensorBoard event files (default) or metrics.csv in
    the run folder, or a wandb run (the fork's project "dvi2", named after the job)."""
    if kind == "csv":
        from lightning.fabric.loggers import CSVLogger

        return CSVLogger(root_dir=log_dir, name="", version="")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project="dvi2", name=jobname, save_dir=log_dir)
    from lightning.fabric.loggers import TensorBoardLogger

    return TensorBoardLogger(root_dir=log_dir, name="", version="", default_hp_metric=False)


class ShardSampler(torch.utils.data.Sampler):
    """Rank r of w takes items r, r + w, r + 2w, ...: every item once over all ranks, without the
    duplicates a DistributedSampler adds to equalise the shards (used for evaluation)."""

    def __init__(self, size, num_replicas=1, rank=0):
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


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


def mean_over_ranks(fabric, logs):
    """{name: float} averaged over the ranks (the same dict on every rank)."""
    if fabric.world_size == 1:
        return logs
    keys = sorted(logs)
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=fabric.device)
    values = fabric.all_reduce(values, reduce_op="mean")
    return dict(zip(keys, values.tolist()))


def all_finite(fabric, value):
    """Whether ``value`` (a scalar) is finite on every rank: all ranks stop together."""
    flag = torch.tensor([1.0 if math.isfinite(float(value)) else 0.0], device=fabric.device)
    return bool(fabric.all_reduce(flag, reduce_op="min").item() > 0)
