"""Process-group helpers for torchrun/DDP, and the gather of negatives across processes.

Launch with ``torchrun --nproc_per_node 8 -m relsim.cli train ...`` (or ``relsim train`` under torchrun):
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` are read from the environment. Without them everything is a
single process and every helper is a no-op.

Example:
    >>> rows, offset = gather_rows(torch.ones(2, 3))   # one process: the input itself, offset 0
    >>> rows.shape, offset
    (torch.Size([2, 3]), 0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str | None) -> tuple[Env, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        return Env(dist.get_rank(), dist.get_world_size(), local_rank), dev
    return Env(), dev


def env() -> Env:
    if dist.is_available() and dist.is_initialized():
        return Env(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Env()


def barrier() -> None:
    if env().world > 1:
        dist.barrier()


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every process's rows of ``x`` in rank order; return them and this rank's first row.

    Processes may hold different numbers of rows (skipped images). The local rows are ``x`` itself, so
    gradients flow into them; other ranks' rows are constants here (their own process computes their
    gradients).
    """
    e = env()
    if e.world == 1:
        return x, 0
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(e.world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(e.world)]
    dist.all_gather(parts, padded)
    rows = [p[:s] for p, s in zip(parts, sizes, strict=True)]
    rows[e.rank] = x
    return torch.cat(rows), sum(sizes[: e.rank])


def gather_objects(items: list) -> list:
    """Every process's ``items`` (picklable, e.g. generated captions), concatenated in rank order, on every process."""
    if env().world == 1:
        return list(items)
    parts: list = [None] * env().world
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (a copy; for logging and metrics)."""
    values = values.clone()
    if env().world > 1:
        dist.all_reduce(values)
    return values


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = [
    "Env",
    "setup",
    "env",
    "barrier",
    "gather_rows",
    "gather_objects",
    "all_reduce_sum",
    "cleanup",
]
