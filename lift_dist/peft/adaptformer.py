"""AdaptFormer (LIFT's default): a bottleneck MLP parallel to each block's FFN.

out = x + FFN(ln_2(x)) + s · Up(ReLU(Down(LN(x)))), reading the pre-ln_2 residual stream.
As in LIFT (and unlike the original AdaptFormer) it has its own LayerNorm and a learnable scale s
starting at 1; Up is zero-initialised, so the block starts as the exact identity.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

from lift_dist.peft.base import BottleneckR, PeftConfig, PeftMethod, SizeBlocks, default_bottleneck, size_blocks


class AdaptFormerConfig(PeftConfig):
    r: BottleneckR | None = None  # None: 2^floor(log2(C / 2L)), L as r_blocks says
    r_blocks: SizeBlocks = "all"  # LIFT: all blocks of the backbone; LIFT+: the selected ones
    # LIFT: kaiming_normal(a=sqrt(5)); LIFT+: kaiming_uniform(a=sqrt(5)). Both have std 1/sqrt(3D).
    down_init: Literal["kaiming_normal", "kaiming_uniform"] = "kaiming_normal"


class Bottleneck(nn.Module):
    """LN -> Down(D->r) -> ReLU -> Up(r->D), optionally times a learnable scalar."""

    def __init__(self, dim: int, r: int, learnable_scale: bool, down_init: str = "kaiming_normal"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, r)
        self.up = nn.Linear(r, dim)
        # The down weight: kaiming_normal_ (LIFT) or kaiming_uniform_ (LIFT+) with a=sqrt(5); zeros elsewhere.
        getattr(nn.init, down_init + "_")(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        # 1-element like LIFT's; it is weight-decayed like every trainable tensor there.
        self.scale = nn.Parameter(torch.ones(1)) if learnable_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.relu(self.down(self.norm(x))))
        return y * self.scale if self.scale is not None else y


class AdaptFormer(PeftMethod):
    name = "adaptformer"
    config_class = AdaptFormerConfig
    identity_at_init = True
    site = "adaptformer"  # parallel to the FFN
    learnable_scale = True
    size_parameter = "r"

    def apply(self, vit, num_classes: int) -> dict:
        layers = self.layers(vit)
        r = self.config.r or default_bottleneck(num_classes, size_blocks(self.config.r_blocks, vit, layers))
        for i in layers:
            vit.blocks[i].add(self.site, Bottleneck(vit.width, r, self.learnable_scale, self.config.down_init), self.name)
        return {"r": r, "layers": layers}
