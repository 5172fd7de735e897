"""Visual prompt tuning: learnable tokens appended after the patch tokens.

Each prompted block first truncates the sequence to the original tokens (dropping an earlier block's
prompts), then appends its own. Shallow = one prompt before block 0, carried through every block;
deep = a fresh prompt before each selected block. Prompts get no positional embedding.
LIFT: length 10, init uniform(±sqrt(6 / (3·p² + D))), p the patch size. LIFT+: length
2^floor(log2(C / L)) over the selected blocks, init N(0, 0.02²), and the prompts sit between CLS and
the patches, which changes nothing: attention without positional information does not see order,
and only CLS is read out.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field

from lift_dist.peft.base import PeftConfig, PeftMethod
from lift_dist.validation import Strict

PromptLength = Annotated[int, Field(ge=1)] | None  # None: 2^floor(log2(C / selected blocks)) (LIFT+)
PromptInit = Literal["uniform", "normal"]  # LIFT: uniform(±sqrt(6 / (3p² + D))); LIFT+: N(0, 0.02²)


class VptConfig(PeftConfig):
    length: PromptLength = 10
    init: PromptInit = "uniform"


class Prompt(nn.Module):
    def __init__(self, length: int, dim: int, patch_size: int, init: str = "uniform"):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(length, dim))
        if init == "normal":
            nn.init.normal_(self.tokens, std=0.02)
        else:
            bound = math.sqrt(6.0 / (3 * patch_size * patch_size + dim))
            nn.init.uniform_(self.tokens, -bound, bound)

    def forward(self, x: torch.Tensor, seq_len: int) -> torch.Tensor:
        p = self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :seq_len], p], dim=1)


class _Vpt(PeftMethod):
    config_class = VptConfig
    size_parameter = "length"

    def _add(self, vit, layers: list[int], num_classes: int) -> dict:
        length = self.config.length or 2 ** max(0, math.floor(math.log2(num_classes / max(1, len(layers)))))
        for i in layers:
            vit.blocks[i].add("prompt", Prompt(length, vit.width, vit.patch_size, self.config.init), self.name)
        return {"length": length, "layers": layers}


class VptShallowConfig(Strict):
    """No `layers`: shallow is by definition the input of block 0, so a layer selection is refused
    (on its own) or applies only to the other modules it is combined with."""

    length: PromptLength = 10
    init: PromptInit = "uniform"


class VptShallow(_Vpt):
    name = "vpt-shallow"
    config_class = VptShallowConfig

    @classmethod
    def touched_blocks(cls, config, num_layers: int) -> list[int]:
        return [0]

    def apply(self, vit, num_classes: int) -> dict:
        return self._add(vit, [0], num_classes)


class VptDeep(_Vpt):
    name = "vpt-deep"

    def apply(self, vit, num_classes: int) -> dict:
        return self._add(vit, self.layers(vit), num_classes)
