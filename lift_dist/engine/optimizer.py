"""The optimizer over the trainable tensors and its learning-rate schedule (no DeepSpeed here: the
engine wraps what `build_optimizer` returns)."""

from __future__ import annotations

import math

import torch

from lift_dist.config import OptimConfig
from lift_dist.errors import ConfigError


def lr_factor(o: OptimConfig, epoch: int, global_step: int, total_steps: int) -> float:
    if o.warmup_steps and global_step < o.warmup_steps:
        return (global_step + 1) / o.warmup_steps
    if o.schedule == "cosine_epoch":  # constant within an epoch, as in LIFT
        return 0.5 * (1 + math.cos(math.pi * epoch / o.epochs))
    if o.schedule == "cosine_step":
        t = (global_step - o.warmup_steps) / max(1, total_steps - o.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return 1.0


def build_optimizer(o: OptimConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if not params:
        raise ConfigError("nothing to train: the chosen modules and head have no trainable tensors")
    # Weight decay on every trainable tensor, as in LIFT (no exclusion list). foreach: a few multi-tensor
    # kernels instead of the per-tensor Python loop that is torch's CPU default; the values are the
    # loop's bit for bit (fused kernels are faster still but differ in the last bits).
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, foreach=True)
