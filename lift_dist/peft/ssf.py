"""SSF: per-channel scale and shift y = x·γ + β after chosen operations.

Sites: 'attn' = on the qkv output (3D) and the out-proj output (D); 'mlp' = on the fc1 output (4D,
before the activation) and the fc2 output (D); 'ln' = after ln_1 and ln_2 (D each).
Default 'attn,mlp' (LIFT+'s SSF). Init γ ~ N(1, 0.02), β ~ N(0, 0.02): close to, not exactly, identity.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn as nn
from pydantic import AfterValidator

from lift_dist.errors import choices
from lift_dist.peft.base import PeftConfig, PeftMethod

SITE_GROUPS = {
    "attn": (("ssf_attn_in", 3), ("ssf_attn_out", 1)),
    "mlp": (("ssf_mlp_in", 4), ("ssf_mlp_out", 1)),
    "ln": (("ssf_ln1", 1), ("ssf_ln2", 1)),
}


def _check_sites(sites: str) -> str:
    groups = [g.strip() for g in sites.split(",") if g.strip()]
    bad = [g for g in groups if g not in SITE_GROUPS]
    if bad or not groups:
        raise ValueError(f"unknown site group '{bad[0] if bad else ''}'; valid: {choices(SITE_GROUPS)}")
    return ",".join(groups)


class SsfConfig(PeftConfig):
    sites: Annotated[str, AfterValidator(_check_sites)] = "attn,mlp"


class ScaleShift(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.empty(dim).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class Ssf(PeftMethod):
    name = "ssf"
    config_class = SsfConfig

    def apply(self, vit, num_classes: int) -> dict:
        groups = self.config.sites.split(",")
        layers = self.layers(vit)
        for i in layers:
            for g in groups:
                for site, mult in SITE_GROUPS[g]:
                    vit.blocks[i].add(site, ScaleShift(mult * vit.width), self.name)
        return {"sites": groups, "layers": layers}
