"""Forward + backward time per image for a model + module, random init (the baseline for speed work).

    python benchmarks/forward_backward.py                       # tiny and ViT-B-16 × adaptformer/full/none
    python benchmarks/forward_backward.py --models tiny --batch 32 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lift_dist.model.lift_model import ModelConfig, build_model


def measure(name: str, peft: str, batch: int, steps: int, warmup: int, num_classes: int, device: str) -> dict:
    torch.manual_seed(0)
    model, clip = build_model(ModelConfig(name=name, peft=[peft], head_init="random"), num_classes)
    del clip
    model.to(device).train()
    res = model.encoder.image_size
    x = torch.randn(batch, 3, res, res, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    params = [p for _, p in model.trainable_named_parameters()]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    fwd = bwd = 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= warmup:
            fwd += t1 - t0
            bwd += t2 - t1
    rep = model.parameter_report()
    n = steps * batch
    return {
        "model": name, "peft": peft, "batch": batch, "resolution": res,
        "trainable_params": rep["trainable"], "ms_per_image": 1000 * (fwd + bwd) / n,
        "forward_ms_per_image": 1000 * fwd / n, "backward_step_ms_per_image": 1000 * bwd / n,
        "images_per_s": n / (fwd + bwd),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,ViT-B-16")
    p.add_argument("--pefts", default="adaptformer,full,none")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = [measure(m, pe, a.batch, a.steps, a.warmup, a.num_classes, a.device)
            for m in a.models.split(",") for pe in a.pefts.split(",")]
    if a.json:
        machine = platform.processor() or platform.machine()
        print(json.dumps({"machine": machine, "threads": torch.get_num_threads(), "rows": rows}, indent=2))
        return
    print(f"forward+backward on {a.device}, {torch.get_num_threads()} threads, batch {a.batch}, {a.steps} timed steps")
    print(f"{'model':<10} {'module':<12} {'trainable':>12} {'ms/img':>8} {'fwd':>7} {'bwd+opt':>8} {'img/s':>8}")
    for r in rows:
        print(f"{r['model']:<10} {r['peft']:<12} {r['trainable_params']:>12,} {r['ms_per_image']:>8.2f} "
              f"{r['forward_ms_per_image']:>7.2f} {r['backward_step_ms_per_image']:>8.2f} {r['images_per_s']:>8.1f}")


if __name__ == "__main__":
    main()
