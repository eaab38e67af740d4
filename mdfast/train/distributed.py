"""Data parallelism over ``torch.distributed`` for the policy trainer (launched with ``torchrun``).

Each rank decodes its share of the prompts (whole groups: a prompt's G trajectories never leave
their rank), computes their rewards and advantages, and its per-group policy gradients; the
ranks then exchange those gradients (``all_gather_rows``) and every rank sums all of them in the
global group order. The sum is therefore the same float32 sum a single process forms over the
same groups, so N ranks and one process end with bitwise the same policy (a test checks it).
NCCL on GPUs, gloo on CPUs; one process is the plain, non-distributed case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["World", "all_gather_rows", "all_reduce_sum", "barrier", "init_from_env", "world"]


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes, and the device it computes on."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world(device: torch.device | str | None = None) -> World:
    """The current process group (rank 0 of 1 when there is none)."""
    device = torch.device("cpu" if device is None else device)
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), device)
    return World(0, 1, device)


def init_from_env(device: str | None = None) -> World:
    """Join the process group ``torchrun`` describes, when WORLD_SIZE > 1 and no group exists yet.

    - The environment: WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT; NCCL with one GPU per rank
      (cuda:LOCAL_RANK) where CUDA is used, else gloo on the CPU.
    - device: "cpu" or "cuda" forces one; by default CUDA when available.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world(target)


def all_gather_rows(x: Tensor) -> Tensor:
    """(size * n, ...) from every rank's (n, ...) (the same shape on every rank), in rank order."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over the ranks (a new tensor; ``x`` itself on one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    total = x.clone()
    dist.all_reduce(total)
    return total


def barrier() -> None:
    """Wait for every rank (nothing on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
