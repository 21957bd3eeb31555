"""torch.distributed from torchrun's environment: init, reductions, the main-rank check.

One process (no WORLD_SIZE, or WORLD_SIZE=1) runs without a process group; the
helpers below then do nothing, so the step code is the same in both cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # init() created the process group, so shutdown() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(setting: str, local_rank: int = 0) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError(
                'trainer.device = "cuda" but torch sees no CUDA device. Fix: set trainer.device = "cpu" or "auto"'
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(device_setting: str = "auto") -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_setting, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=device, owns_group=owns)


def all_reduce(values: list[float], ctx: DistContext, op: str = "sum") -> list[float]:
    """Reduce a few numbers over ranks (float64 on the wire)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
