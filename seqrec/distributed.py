"""Data-parallel training across processes (`torchrun`, or any launcher that sets the
`torch.distributed` environment), for the one trainer every model uses (`seqrec.training`).

Every process builds the same model from the same seed and draws the same global batches
(the batchers are seeded alike); each trains on its share of every batch's rows
(`shard_rows`), the gradients are summed across processes (`all_reduce_gradients`), and every
process takes the same optimizer step, so the weights stay identical. Each process's loss is
scaled by its share of the batch's (history → next) pairs (`global_share`), which makes the
summed gradient the one of the whole batch: N processes follow the loss curve of one process
with the same global batch (a test checks it with two CPU processes and the gloo backend).

    torchrun --nproc-per-node 2 -m cli.main train-srm --model sasrec --dataset ml-100k --out runs/srm
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process is one of several training together."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's index (0 when training alone)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group a launcher described in the environment (`WORLD_SIZE` > 1);
    gloo on CPU, NCCL when every process has a GPU. Returns whether it joined one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend)
    return True


def leave() -> None:
    """Leave the process group `init_from_env` joined (nothing when training alone)."""
    if is_distributed():
        dist.destroy_process_group()


def shard_rows(batch: Any) -> Any:
    """This process's rows (`rank::world_size`) of a batch dataclass whose array fields all
    have one row per example (`WindowBatch`, `TrainBatch`); the batch itself when alone."""
    if not is_distributed():
        return batch
    index = slice(rank(), None, world_size())
    fields = {
        f.name: (value[index] if isinstance(value, np.ndarray) else value)
        for f in dataclasses.fields(batch)
        for value in [getattr(batch, f.name)]
    }
    return type(batch)(**fields)


def global_share(pairs: int) -> float:
    """`pairs / (pairs of every process)` for this batch: the weight of this process's mean
    loss in the batch's mean (1.0 when alone)."""
    if not is_distributed():
        return 1.0
    total = torch.tensor([float(pairs)])
    dist.all_reduce(total)
    return pairs / max(float(total.item()), 1.0)


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Sum every parameter's gradient across processes (a process whose rows gave a parameter
    no gradient contributes zeros)."""
    if not is_distributed():
        return
    for parameter in model.parameters():
        if parameter.requires_grad:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad)


def all_reduce_sum(*values: float) -> tuple[float, ...]:
    """The sums of `values` across processes (themselves when alone)."""
    if not is_distributed():
        return values
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return tuple(total.tolist())
