"""Adapter (sequential, Houlsby-style): f <- f + Up(ReLU(Down(LN(f)))) on each block's FFN output,
before the residual add. The same bottleneck as AdaptFormer without the scale; zero-initialised Up,
so the block starts as the exact identity."""

from __future__ import annotations

from lift_dist.peft.adaptformer import AdaptFormer, AdaptFormerConfig


class AdapterConfig(AdaptFormerConfig):
    """The same options as AdaptFormer's (r, r_blocks, down_init)."""


class Adapter(AdaptFormer):
    name = "adapter"
    config_class = AdapterConfig
    site = "adapter"  # after the FFN output, before the residual add
    learnable_scale = False
