"""The FLOP count behind the benchmarks' MFU: torch's counter against the ViT's arithmetic."""

import pytest

from lift_dist.config import ModelConfig
from lift_dist.engine.flops import forward_flops_per_image, utilisation
from lift_dist.model.lift_model import build_model


def vit_forward_flops(res: int, patch: int, width: int, layers: int, classes: int) -> int:
    """2 FLOPs per multiply-add: patch embedding, per block qkv + out (4D²) and MLP (8D²) per token,
    attention scores and mixing (2N²D), then the classifier. The last block, whose CLS token alone is
    read, computes every token's keys and values (3D² each) but the rest for the CLS token only."""
    n_patch = (res // patch) ** 2
    n = n_patch + 1
    per_block = 12 * n * width**2 + 2 * n * n * width
    last_block = 3 * n * width**2 + 9 * width**2 + 2 * n * width
    return 2 * (n_patch * width * 3 * patch**2 + (layers - 1) * per_block + last_block + width * classes)


@pytest.mark.parametrize("peft, extra", [("none", 0), ("adaptformer", None)])
def test_forward_flops_match_the_vit_arithmetic(peft, extra):
    model, _ = build_model(ModelConfig(name="tiny", peft=[peft], head_init="random"), 10)
    base = vit_forward_flops(64, 16, 128, 4, 10)
    if extra is None:  # AdaptFormer: down and up projections of the r-wide bottleneck, every token read
        r = model.peft_info["adaptformer"]["r"]
        extra = 2 * (3 * 17 + 1) * 2 * 128 * r
    assert forward_flops_per_image(model, 64) == base + extra


def test_utilisation_uses_the_named_gpus_peak():
    flops = 35_000_000_000
    assert utilisation(1000, flops, None) == {"train_tflops": 70.0}
    assert utilisation(1000, flops, "NVIDIA H100 80GB HBM3")["mfu"] == pytest.approx(70 / 989)
    assert utilisation(1000, flops, "NVIDIA H100 PCIe")["mfu"] == pytest.approx(70 / 756)
    assert "mfu" not in utilisation(1000, flops, "NVIDIA GeForce RTX 4090")


def _step_flops(peft: str) -> tuple[int, int]:
    """Forward and backward FLOPs of one training step (attention spelled out as matmuls, so it counts)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(name="tiny", peft=[peft], head_init="random"), 10)
    x, y = torch.randn(4, 3, 64, 64), torch.arange(4)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            loss = F.cross_entropy(model(x), y)
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


@pytest.mark.parametrize("peft", ["adaptformer", "lora"])
def test_the_step_computes_no_frozen_weight_gradient(peft):
    """What the backward pass computes, counted: at most one forward's FLOPs (on tiny, 0.62x for
    AdaptFormer, 0.83x for LoRA: activation gradients from the first trainable tensor on, and the
    trainable tensors' own small gradients), where a single frozen weight gradient would add a
    block's worth. The control, full fine-tuning, computes every
    weight gradient too: 1.75x the forward. (test_peft checks autograd's graph reaches only the
    trainable tensors.)"""
    forward, backward = _step_flops(peft)
    assert backward <= forward, (peft, backward / forward)
    full_forward, full_backward = _step_flops("full")
    assert full_backward >= 1.7 * full_forward, full_backward / full_forward
