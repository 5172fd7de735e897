"""The FLOP count behind the benchmarks' MFU: torch's counter against the ViT's arithmetic."""

import pytest

from lift_dist.config import ModelConfig
from lift_dist.engine.flops import forward_flops_per_image, utilisation
from lift_dist.model.lift_model import build_model


def vit_forward_flops(res: int, patch: int, width: int, layers: int, classes: int) -> int:
    """2 FLOPs per multiply-add: patch embedding, per block qkv + out (4D²) and MLP (8D²) per token,
    attention scores and mixing (2N²D), then the classifier."""
    n_patch = (res // patch) ** 2
    n = n_patch + 1
    per_block = 12 * n * width**2 + 2 * n * n * width
    return 2 * (n_patch * width * 3 * patch**2 + layers * per_block + width * classes)


@pytest.mark.parametrize("peft, extra", [("none", 0), ("adaptformer", None)])
def test_forward_flops_match_the_vit_arithmetic(peft, extra):
    model, _ = build_model(ModelConfig(name="tiny", peft=[peft], head_init="random"), 10)
    base = vit_forward_flops(64, 16, 128, 4, 10)
    if extra is None:  # AdaptFormer: down and up projections of the r-wide bottleneck, every token, every block
        r = model.peft_info["adaptformer"]["r"]
        extra = 2 * 4 * 17 * 2 * 128 * r
    assert forward_flops_per_image(model, 64) == base + extra


def test_utilisation_uses_the_named_gpus_peak():
    flops = 35_000_000_000
    assert utilisation(1000, flops, None) == {"train_tflops": 70.0}
    assert utilisation(1000, flops, "NVIDIA H100 80GB HBM3")["mfu"] == pytest.approx(70 / 989)
    assert utilisation(1000, flops, "NVIDIA H100 PCIe")["mfu"] == pytest.approx(70 / 756)
    assert "mfu" not in utilisation(1000, flops, "NVIDIA GeForce RTX 4090")
