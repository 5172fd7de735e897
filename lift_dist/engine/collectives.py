"""Sums and broadcasts of small CPU tensors across ranks (a no-op in a single process)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sum_(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """In-place SUM over ranks of a CPU tensor (NCCL needs it on the GPU for the reduction)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    x = t.to(device)
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    t.copy_(x.to(t.device))
    return t


def broadcast_(t: torch.Tensor, device: torch.device, src: int = 0) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    x = t.to(device)
    dist.broadcast(x, src=src)
    t.copy_(x.to(t.device))
    return t
