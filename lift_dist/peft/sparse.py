"""Arbitrary sparse fine-tuning: train a random fraction α of each linear layer's weights and biases.

As in LIFT: for each selected block (in order) and each of its linear layers (attn_in, attn_out,
mlp_in, mlp_out) with weight (out, in) and bias (out), k = int(α·(out·in + out)) positions are drawn
with randperm from ONE generator seeded with `seed`, over the (out, in+1) matrix whose last column is
the bias. The trainable values start as the pretrained entries; every other entry is frozen (its
gradient is never computed). Masks are not saved: they are regenerated from the seed.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn as nn
from pydantic import Field

from lift_dist.peft.base import PeftConfig, PeftMethod


class SparseConfig(PeftConfig):
    alpha: Annotated[float, Field(gt=0, le=1)] | None = None  # None: LIFT's C / (12·L·D) floored to 0.001 steps
    seed: int = 0


def default_alpha(num_classes: int, num_layers: int, width: int) -> float:
    """About C·D trainable entries over 12·D² per block. Floored to 0.001 steps in exact decimal,
    where LIFT's float `// 0.001 * 0.001` gives e.g. 0.009000000000000001 (same counts)."""
    raw = num_classes / (12 * num_layers * width)
    return max(0.001, math.floor(raw * 1000 + 1e-9) / 1000)


class SparseWeights(nn.Module):
    """Supplies (weight, bias) = frozen entries with the trainable `values` scattered in."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, alpha: float, generator: torch.Generator):
        super().__init__()
        out_f, in_f = weight.shape
        n = out_f * (in_f + 1)
        k = int(n * alpha)
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=generator)[:k]] = True
        mask = flat.view(out_f, in_f + 1)
        self.register_buffer("mask", mask.to(weight.device), persistent=False)
        joint = torch.cat([weight.detach(), bias.detach()[:, None]], dim=1)
        self.values = nn.Parameter(joint[self.mask].clone())

    def forward(self, weight: torch.Tensor, bias: torch.Tensor):
        joint = torch.cat([weight, bias[:, None]], dim=1).detach()
        joint = joint.masked_scatter(self.mask, self.values.to(joint.dtype))
        return joint[:, :-1], joint[:, -1]


class Sparse(PeftMethod):
    name = "sparse"
    config_class = SparseConfig
    size_parameter = "alpha"

    def apply(self, vit, num_classes: int) -> dict:
        alpha = self.config.alpha
        if alpha is None:
            alpha = default_alpha(num_classes, vit.num_layers, vit.width)
        layers = self.layers(vit)
        gen = torch.Generator().manual_seed(self.config.seed)
        for i in layers:
            blk = vit.blocks[i]
            for name in blk.LINEARS:
                w, b = blk.frozen_linear(name)
                blk.set_weight_provider(name, SparseWeights(w, b, float(alpha), gen))
        return {"alpha": float(alpha), "seed": self.config.seed, "layers": layers}
