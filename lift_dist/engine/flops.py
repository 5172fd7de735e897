"""Model FLOP utilisation: training FLOPs taken as 2x the forward FLOPs (frozen weights get no weight
gradients, so backward costs about one forward: the activation gradients), over the GPU's dense
bf16 peak."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), SXM parts; matched against the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}


def forward_flops_per_image(model: torch.nn.Module, resolution: int, device="cpu", bf16: bool = False) -> int:
    """FLOPs of one image's forward pass, counted by torch (2 per multiply-add, attention included);
    `bf16` runs it under autocast, for models holding bf16 weights (the count is the same)."""
    device = torch.device(device)
    x = torch.zeros(1, 3, resolution, resolution, device=device)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    # The maths kernel spells attention out as matmuls, so it is counted on every device (the fused
    # CPU kernel is invisible to the counter).
    with torch.no_grad(), cast, sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def utilisation(images_per_s: float, forward_flops: int, device_name: str | None) -> dict:
    """Achieved training TFLOP/s and, for a GPU with a known peak, the model FLOP utilisation."""
    out = {"train_tflops": 2 * forward_flops * images_per_s / 1e12}
    peak = peak_tflops(device_name) if device_name else None
    if peak:
        out["mfu"] = out["train_tflops"] / peak
    return out
