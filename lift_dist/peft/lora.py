"""LoRA on the attention's q and v projections: q += (h A B) / r, v likewise, h = ln_1(x).

LIFT's choices are kept because they set the effective learning rate: scaling 1/r with no alpha, and
A drawn with kaiming_uniform(a=sqrt(5)) on a (D, r) tensor, whose fan-in is r, so A ~ U(±1/sqrt(r)).
B is zero, so the model starts as the exact identity.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn as nn
from pydantic import Field

from lift_dist.peft.base import BottleneckR, PeftConfig, PeftMethod, SizeBlocks, default_bottleneck, size_blocks


class LoraConfig(PeftConfig):
    r: BottleneckR | None = None
    # Default r = 2^floor(log2(C / (divisor * L))): LIFT uses 2 and all blocks, LIFT+ 4 and the selected ones.
    divisor: Annotated[int, Field(ge=1)] = 2
    r_blocks: SizeBlocks = "all"


class LowRankDelta(nn.Module):
    def __init__(self, dim: int, r: int):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(dim, r))
        self.lora_B = nn.Parameter(torch.zeros(r, dim))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = 1.0 / r

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # LIFT scales h A B; scaling the rank-r h A instead is the same product (exactly so for the
        # default power-of-two r) without a pass over the (B, N, D) output, forward and backward.
        return ((h @ self.lora_A) * self.scaling) @ self.lora_B


class Lora(PeftMethod):
    name = "lora"
    config_class = LoraConfig
    identity_at_init = True
    size_parameter = "r"

    def apply(self, vit, num_classes: int) -> dict:
        layers = self.layers(vit)
        r = self.config.r or default_bottleneck(num_classes, size_blocks(self.config.r_blocks, vit, layers), self.config.divisor)
        for i in layers:
            vit.blocks[i].add("lora_q", LowRankDelta(vit.width, r), self.name)
            vit.blocks[i].add("lora_v", LowRankDelta(vit.width, r), self.name)
        return {"r": r, "layers": layers}
