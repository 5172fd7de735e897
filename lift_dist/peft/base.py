"""Shared pieces of the lightweight-module methods: config base class, layer selection, sizing."""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar, Literal

import torch.nn as nn
from pydantic import AfterValidator, Field

from lift_dist.errors import ConfigError
from lift_dist.validation import Strict

_LAYER_SPEC = re.compile(r"^(all|none|last:\d+|\d+(,\d+)*)$")


def _check_layer_spec(spec):
    if isinstance(spec, bool):
        raise ValueError("use all, none, last:K or a list like 0,5,11")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError("a number of last blocks must be >= 0")
        return spec
    if isinstance(spec, list):
        if any(i < 0 for i in spec):
            raise ValueError("block indices must be >= 0")
        return spec
    if not _LAYER_SPEC.match(str(spec).replace(" ", "")):
        raise ValueError("use all, none, last:K or a list like 0,5,11")
    return str(spec).replace(" ", "")


# 'all', 'none', 'last:K', '0,3,11', an int K (= last:K) or a list of indices.
LayerSpec = Annotated[int | list[int] | str, AfterValidator(_check_layer_spec)]
BottleneckR = Annotated[int, Field(ge=1)]
# Which blocks a default size is spread over: LIFT divides by all blocks of the backbone whatever the
# selection (models/peft_vit.py), LIFT+ by the selected ones (trainer.py).
SizeBlocks = Literal["all", "selected"]


class PeftConfig(Strict):
    """Fields every method has. `layers`: 'all', 'last:k', 'none' or explicit indices '0,3,11'."""

    layers: LayerSpec = "all"


def select_layers(spec: str | int | list | None, num_layers: int, method: str) -> list[int]:
    """Resolve a layer selection to sorted block indices, with errors naming the valid range."""
    if spec is None or spec == "all":
        return list(range(num_layers))
    if spec == "none":
        return []
    if isinstance(spec, int):
        spec = f"last:{spec}"
    if isinstance(spec, (list, tuple)):
        idx = [int(i) for i in spec]
    elif isinstance(spec, str) and spec.startswith("last:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"{method}: bad layer selection '{spec}'; use all, none, last:K or a list like 0,5,11") from None
        if not 0 <= k <= num_layers:
            raise ConfigError(f"{method}: last:{k} is out of range; the model has {num_layers} blocks (0..{num_layers})")
        return list(range(num_layers - k, num_layers))
    else:
        try:
            idx = [int(t) for t in str(spec).replace(" ", "").split(",") if t != ""]
        except ValueError:
            raise ConfigError(f"{method}: bad layer selection '{spec}'; use all, none, last:K or a list like 0,5,11") from None
    bad = [i for i in idx if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"{method}: layer index {bad[0]} is out of range; valid block indices are 0..{num_layers - 1}")
    return sorted(set(idx))


def default_bottleneck(num_classes: int, num_layers: int, divisor: int = 2) -> int:
    """LIFT's r = 2^max(0, floor(log2(C / (divisor * L)))): about C*D parameters, the classifier's size."""
    if num_layers == 0:
        return 1
    return 2 ** max(0, math.floor(math.log2(num_classes / (divisor * num_layers))))


def size_blocks(rule: str, vit, layers: list[int]) -> int:
    return vit.num_layers if rule == "all" else len(layers)


class PeftMethod:
    """A lightweight-fine-tuning method: `apply` adds modules to (or unfreezes parts of) a PeftViT.

    `size_parameter` names the config field a sweep varies for this method (r, alpha, length), or None."""

    name: ClassVar[str]
    config_class: ClassVar[type[PeftConfig]] = PeftConfig
    size_parameter: ClassVar[str | None] = None
    # Additive modules that start as the exact identity (checked by tests).
    identity_at_init: ClassVar[bool] = False

    def __init__(self, config: PeftConfig):
        self.config = config

    @classmethod
    def check(cls, config: PeftConfig, num_layers: int) -> None:
        """Everything about `config` that can be checked from the model's depth alone (before building)."""
        if "layers" in type(config).model_fields:
            select_layers(config.layers, num_layers, cls.name)

    def apply(self, vit, num_classes: int) -> dict:
        """Attach the method to `vit`; return facts for the parameter report (e.g. {'r': 32})."""
        raise NotImplementedError

    @classmethod
    def touched_blocks(cls, config: PeftConfig, num_layers: int) -> list[int]:
        """The blocks `apply` changes or trains, from the config alone (what a feature cache may skip)."""
        return select_layers(config.layers, num_layers, cls.name) if "layers" in type(config).model_fields else []

    def layers(self, vit) -> list[int]:
        return select_layers(self.config.layers, vit.num_layers, self.name)


def unfreeze(params) -> int:
    n = 0
    for p in params:
        p.requires_grad_(True)
        n += p.numel()
    return n


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
