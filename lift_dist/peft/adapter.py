"""Adapter (sequential, Houlsby-style): f <- f + Up(ReLU(Down(LN(f)))) on each block's FFN output,
before the residual add. Zero-initialised Up, so the block starts as the exact identity."""

from __future__ import annotations

from dataclasses import dataclass

from lift_dist.peft.adaptformer import Bottleneck
from lift_dist.peft.base import PeftConfig, PeftMethod, check_r, default_bottleneck


@dataclass
class AdapterConfig(PeftConfig):
    r: int | None = None


class Adapter(PeftMethod):
    name = "adapter"
    config_class = AdapterConfig
    identity_at_init = True

    def apply(self, vit, num_classes: int) -> dict:
        check_r(self.config.r, self.name)
        layers = self.layers(vit)
        r = self.config.r or default_bottleneck(num_classes, len(layers))
        for i in layers:
            vit.blocks[i].add("adapter", Bottleneck(vit.width, r, learnable_scale=False), self.name)
        return {"r": r, "layers": layers}
