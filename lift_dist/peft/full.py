"""Full and partial fine-tuning: every parameter of the selected blocks (qkv, out-proj, fc1, fc2, ln_1,
ln_2). Embeddings, ln_pre, ln_post and the projection stay frozen, as in LIFT. `partial` is the same
with the last 3 blocks by default (LIFT's `partial k`; choose k with --layers last:k)."""

from __future__ import annotations

from lift_dist.peft.base import PeftConfig, PeftMethod, unfreeze


class Full(PeftMethod):
    name = "full"

    def apply(self, vit, num_classes: int) -> dict:
        layers = self.layers(vit)
        for i in layers:
            unfreeze(vit.blocks[i].block.parameters())
        return {"layers": layers}


class PartialConfig(PeftConfig):
    layers: str = "last:3"


class Partial(Full):
    name = "partial"
    config_class = PartialConfig


class HeadOnly(PeftMethod):
    """Classifier-only training: no module at all."""

    name = "none"

    @classmethod
    def touched_blocks(cls, config, num_layers: int) -> list[int]:
        return []

    def apply(self, vit, num_classes: int) -> dict:
        return {}
