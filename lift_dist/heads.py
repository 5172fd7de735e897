"""Classifier heads on the pre-projection image feature (LIFT §4, LIFT+ §5.1).

Every head has a `.weight` parameter (C, F) and `set_weight(w)`, which the head inits use. The
parameter name `weight` is part of the checkpoint format (`head.weight`).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from lift_dist.errors import ConfigError, choices

DEFAULT_SCALE = 25.0  # LIFT / LIFT+ `scale` / `classifier_scale`; the classes' own default (30) is never used


def unit_uniform_rows(num_classes: int, in_dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rows drawn from U(-1, 1), each renormalised to unit L2 norm (the official default init)."""
    w = torch.empty(num_classes, in_dim).uniform_(-1.0, 1.0, generator=generator)
    return F.normalize(w, dim=1)


def _fp32(x: torch.Tensor):
    """Heads run in fp32 even under autocast: the head is tiny, and bf16 would quantise σ·cos logits
    near 25 to steps of 0.125 (the official code had fp16 logits, steps of 0.016)."""
    try:
        return torch.autocast(device_type=x.device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


class _Head(nn.Module):
    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        _check_dims(in_dim, num_classes)
        self.in_dim, self.num_classes = in_dim, num_classes
        self.weight = nn.Parameter(unit_uniform_rows(num_classes, in_dim))

    @torch.no_grad()
    def set_weight(self, w: torch.Tensor) -> None:
        """Copy `w` (C, F) into the weight in place (keeps the Parameter object, so optimizers and
        DeepSpeed keep their references). Only W is written; a bias is left as it is (official
        behaviour: every init overwrites W only)."""
        w = torch.as_tensor(w)
        if tuple(w.shape) != tuple(self.weight.shape):
            raise ConfigError(
                f"head weight must have shape {tuple(self.weight.shape)} (classes, feature dim), got {tuple(w.shape)}"
            )
        if not torch.isfinite(w).all():
            raise ConfigError("head weight init contains NaN or inf values")
        self.weight.copy_(w.to(device=self.weight.device, dtype=self.weight.dtype))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}"


class CosineHead(_Head):
    """logits = scale · <x/‖x‖, w/‖w‖>; no bias; the scale is a fixed constant, not learned."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = DEFAULT_SCALE):
        super().__init__(in_dim, num_classes)
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ConfigError(f"cosine head scale must be a positive number, got {scale!r}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _fp32(x):
            x = F.normalize(x.float(), dim=-1, eps=1e-12)
            w = F.normalize(self.weight.float(), dim=-1, eps=1e-12)
            return self.scale * F.linear(x, w)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale}"


class L2NormHead(_Head):
    """logits = <x, w/‖w‖>: the weight is normalised, the feature is not; no scale, no bias."""

    def __init__(self, in_dim: int, num_classes: int, scale: float | None = None):
        super().__init__(in_dim, num_classes)  # `scale` accepted for a uniform signature; unused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _fp32(x):
            return F.linear(x.float(), F.normalize(self.weight.float(), dim=-1, eps=1e-12))


class LinearHead(_Head):
    """logits = W x + b, W kaiming-normal (fan_in, gain √2), b = 0."""

    def __init__(self, in_dim: int, num_classes: int, scale: float | None = None):
        super().__init__(in_dim, num_classes)  # draws the uniform rows first, as the official code does
        nn.init.kaiming_normal_(self.weight)  # default mode fan_in, nonlinearity leaky_relu(0) → std √(2/F)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _fp32(x):
            return F.linear(x.float(), self.weight.float(), self.bias.float())


class LayerNormHead(_Head):
    """LIFT's LayerNormedClassifier: logits = <LN(x), w/‖w‖>, LN without affine parameters (eps 1e-12);
    no scale, no bias."""

    def __init__(self, in_dim: int, num_classes: int, scale: float | None = None):
        super().__init__(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _fp32(x):
            x = F.layer_norm(x.float(), (self.in_dim,), eps=1e-12)
            return F.linear(x, F.normalize(self.weight.float(), dim=-1, eps=1e-12))


HEADS = {"cosine": CosineHead, "linear": LinearHead, "l2": L2NormHead, "layernorm": LayerNormHead}
# The official codes' class names (configs/*.yaml `classifier`), accepted too.
HEAD_ALIASES = {"CosineClassifier": "cosine", "LinearClassifier": "linear", "L2NormedClassifier": "l2",
                "L2NormClassifier": "l2", "LayerNormedClassifier": "layernorm", "LayerNormClassifier": "layernorm",
                "ln": "layernorm"}


def build_head(kind: str, in_dim: int, num_classes: int, scale: float = DEFAULT_SCALE) -> nn.Module:
    if kind not in HEADS:
        raise ConfigError(f"unknown head '{kind}'; valid heads: {choices(HEADS)}")
    return HEADS[kind](in_dim, num_classes, scale=scale)


def _check_dims(in_dim, num_classes) -> None:
    for name, v in (("in_dim", in_dim), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"head {name} must be a positive integer, got {v!r}")
