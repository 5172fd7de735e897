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


def broadcast_text(text: str | None, device: torch.device, src: int = 0) -> str | None:
    """`text` of rank `src` on every rank (None stays None), as bytes in tensors: no pickling."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return text
    data = (text or "").encode()
    size = int(broadcast_(torch.tensor([-1 if text is None else len(data)]), device, src).item())
    if size <= 0:
        return None if size < 0 else ""
    buf = torch.tensor(list(data), dtype=torch.uint8) if dist.get_rank() == src else torch.empty(size, dtype=torch.uint8)
    return bytes(broadcast_(buf, device, src).tolist()).decode()
