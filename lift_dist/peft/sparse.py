"""Arbitrary sparse fine-tuning: train a random fraction α of each linear layer's weights and biases.

The trainable values start as the pretrained entries; every other entry is frozen (its gradient is
never computed). Masks are not saved: they are regenerated from the seed. Two variants, as the two
official codes draw them:

- `lift` (LIFT `mask`): for each selected block in order and each linear layer (attn_in, attn_out,
  mlp_in, mlp_out) with weight (out, in) and bias (out), k = int(α·(out·in + out)) positions are drawn
  with randperm from ONE generator seeded with `seed`, over the (out, in+1) matrix whose last column
  is the bias. Default α = C / (12·L·D) with L all blocks of the backbone, floored with LIFT's own
  float arithmetic `α // 0.001 * 0.001` (which drops a step on exact multiples: 0.125 gives 0.124),
  at least 0.001.
- `lift_plus` (LIFT+ `aft`): weight and bias get separate masks, each from a fresh generator seeded
  with `seed` (so every block gets the same masks), k = int(α·numel). Default α over the selected
  blocks L: all C / (L·(12D+9)), attn C / (L·(4D+4)), mlp C / (L·(8D+5)), not rounded.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field

from lift_dist.peft.base import PeftConfig, PeftMethod

SITES = {"all": ("attn_in", "attn_out", "mlp_in", "mlp_out"), "attn": ("attn_in", "attn_out"), "mlp": ("mlp_in", "mlp_out")}
LIFT_PLUS_DIVISOR = {"all": (12, 9), "attn": (4, 4), "mlp": (8, 5)}  # C / (L·(a·D + b))


class SparseConfig(PeftConfig):
    alpha: Annotated[float, Field(gt=0, le=1)] | None = None  # None: the variant's default (module doc)
    seed: int = 0
    variant: Literal["lift", "lift_plus"] = "lift"
    sites: Literal["all", "attn", "mlp"] = "all"  # LIFT+'s aft_loc


def default_alpha(num_classes: int, num_layers: int, width: int) -> float:
    """LIFT: C / (12·L·D) floored to 0.001 steps exactly as LIFT's float arithmetic does it, >= 0.001."""
    raw = num_classes / (12 * num_layers * width)
    return max(0.001, raw // 0.001 * 0.001)


def lift_plus_alpha(num_classes: int, num_selected: int, width: int, sites: str = "all") -> float:
    a, b = LIFT_PLUS_DIVISOR[sites]
    return num_classes / (num_selected * (a * width + b))


def _mask(numel: int, k: int, generator: torch.Generator) -> torch.Tensor:
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=generator)[:k]] = True
    return flat


class SparseWeights(nn.Module):
    """LIFT: (weight, bias) = frozen entries with the trainable `values` scattered into one joint mask."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, alpha: float, generator: torch.Generator):
        super().__init__()
        out_f, in_f = weight.shape
        n = out_f * (in_f + 1)
        self.register_buffer("mask", _mask(n, int(n * alpha), generator).view(out_f, in_f + 1).to(weight.device),
                             persistent=False)
        joint = torch.cat([weight.detach(), bias.detach()[:, None]], dim=1)
        self.values = nn.Parameter(joint[self.mask].clone())

    def forward(self, weight: torch.Tensor, bias: torch.Tensor):
        joint = torch.cat([weight, bias[:, None]], dim=1).detach()
        joint = joint.masked_scatter(self.mask, self.values.to(joint.dtype))
        return joint[:, :-1], joint[:, -1]


class MaskedWeights(nn.Module):
    """LIFT+: separate masks for weight and bias, each from a freshly seeded generator."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, alpha: float, seed: int):
        super().__init__()
        for name, t in (("weight", weight), ("bias", bias)):
            mask = _mask(t.numel(), int(t.numel() * alpha), torch.Generator().manual_seed(seed)).view(t.shape)
            self.register_buffer(f"{name}_mask", mask.to(t.device), persistent=False)
            self.register_parameter(f"{name}_values", nn.Parameter(t.detach()[mask].clone()))

    def forward(self, weight: torch.Tensor, bias: torch.Tensor):
        w = weight.detach().masked_scatter(self.weight_mask, self.weight_values.to(weight.dtype))
        b = bias.detach().masked_scatter(self.bias_mask, self.bias_values.to(bias.dtype))
        return w, b


class Sparse(PeftMethod):
    name = "sparse"
    config_class = SparseConfig
    size_parameter = "alpha"

    def apply(self, vit, num_classes: int) -> dict:
        c = self.config
        layers = self.layers(vit)
        if c.variant == "lift":
            alpha = c.alpha or default_alpha(num_classes, vit.num_layers, vit.width)
            gen = torch.Generator().manual_seed(c.seed)
            make = lambda w, b: SparseWeights(w, b, float(alpha), gen)
        else:
            alpha = c.alpha or lift_plus_alpha(num_classes, max(1, len(layers)), vit.width, c.sites)
            make = lambda w, b: MaskedWeights(w, b, float(alpha), c.seed)
        for i in layers:
            blk = vit.blocks[i]
            for name in SITES[c.sites]:
                blk.set_weight_provider(name, make(*blk.frozen_linear(name)))
        return {"alpha": float(alpha), "seed": c.seed, "variant": c.variant, "layers": layers}
