"""Visual prompt tuning (LIFT's variant): learnable tokens appended after the patch tokens.

Each prompted block first truncates the sequence to the original tokens (dropping an earlier block's
prompts), then appends its own. Shallow = one prompt before block 0, carried through every block;
deep = a fresh prompt before each selected block. Prompts get no positional embedding.
Init uniform(±sqrt(6 / (3·p² + D))), p the patch size, length 10 (LIFT).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn as nn
from pydantic import Field

from lift_dist.peft.base import PeftConfig, PeftMethod
from lift_dist.validation import Strict


class VptConfig(PeftConfig):
    length: Annotated[int, Field(ge=1)] = 10


class Prompt(nn.Module):
    def __init__(self, length: int, dim: int, patch_size: int):
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_size * patch_size + dim))
        self.tokens = nn.Parameter(torch.empty(length, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, seq_len: int) -> torch.Tensor:
        p = self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :seq_len], p], dim=1)


class _Vpt(PeftMethod):
    config_class = VptConfig
    size_parameter = "length"

    def _add(self, vit, layers: list[int]) -> dict:
        for i in layers:
            vit.blocks[i].add("prompt", Prompt(self.config.length, vit.width, vit.patch_size), self.name)
        return {"length": self.config.length, "layers": layers}


class VptShallowConfig(Strict):
    """No `layers`: shallow is by definition the input of block 0, so a layer selection is refused
    (on its own) or applies only to the other modules it is combined with."""

    length: Annotated[int, Field(ge=1)] = 10


class VptShallow(_Vpt):
    name = "vpt-shallow"
    config_class = VptShallowConfig

    def apply(self, vit, num_classes: int) -> dict:
        return self._add(vit, [0])


class VptDeep(_Vpt):
    name = "vpt-deep"

    def apply(self, vit, num_classes: int) -> dict:
        return self._add(vit, self.layers(vit))
