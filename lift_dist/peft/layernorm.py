"""LayerNorm tuning: train ln_1 and ln_2 (weight and bias) of the selected blocks (LIFT: all blocks)."""

from __future__ import annotations

from lift_dist.peft.base import PeftMethod, unfreeze


class LayerNormTuning(PeftMethod):
    name = "ln"

    def apply(self, vit, num_classes: int) -> dict:
        layers = self.layers(vit)
        for i in layers:
            blk = vit.blocks[i].block
            unfreeze(list(blk.ln_1.parameters()) + list(blk.ln_2.parameters()))
        return {"layers": layers}
