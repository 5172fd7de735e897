"""BitFit: train every bias inside the selected blocks (qkv, out-proj, ln_1, ln_2, fc1, fc2): 11·D per block.

LIFT applies BitFit to all blocks whatever its `partial` setting; here the layer selection is honoured
(default all, which matches LIFT).
"""

from __future__ import annotations

from lift_dist.peft.base import PeftMethod, unfreeze


class BitFit(PeftMethod):
    name = "bitfit"

    def apply(self, vit, num_classes: int) -> dict:
        layers = self.layers(vit)
        for i in layers:
            blk = vit.blocks[i].block
            unfreeze(p for n, p in blk.named_parameters() if n.endswith("bias"))
        return {"layers": layers}
