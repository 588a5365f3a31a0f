"""torchrun / DistributedDataParallel plumbing: process group, samplers, cross-rank gathering.

One process per device; torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Backend: nccl on CUDA,
gloo on CPU. Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

SYNC_BN_UNSUPPORTED = (
    "--sync-bn is not supported: hdkd's MBCSA blocks run their batch norms inside the fused MBCSA "
    "op, so nn.SyncBatchNorm conversion would synchronise only the stem's batch norms and leave "
    "the MBCSA ones per-process; train without it (each process normalises over its own batch, "
    "as plain DistributedDataParallel does)")


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto": the local rank's GPU when CUDA is available, else the CPU."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available here")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "DistContext":
        """Single process unless torchrun's WORLD_SIZE > 1; then joins (or reuses) the group."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, 0, pick_device(device))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = pick_device(device, local_rank)
        if not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, dev)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_gather(self, obj: Any) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (just [obj] when single)."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum of the values over ranks."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BN running statistics) to every rank. DDP broadcasts them at the
        start of each training forward, so after the last one each rank holds its own update."""
        if self.enabled:
            for buf in module.buffers():
                dist.broadcast(buf, 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... with no padding: every sample is evaluated exactly once
    across ranks (DistributedSampler pads with repeats, which would bias the metrics)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
