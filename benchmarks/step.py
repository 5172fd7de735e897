"""Training-step speed: lift-dist's step against a straightforward PyTorch loop of the same model.

lift-dist: the PeftViT path (explicit block maths, fused SDPA, frozen weights with requires_grad off,
so autograd computes no weight gradient for them). Plain loop: open_clip's own forward
(nn.MultiheadAttention), AdaptFormer attached with hooks, LoRA as a parametrization of the
attention's in-projection weight, every tensor requiring grad (full
autograd), torch's default SGD over the same trainable tensors (ours: the trainer's optimizer).
Same batch, same precision; the three timings (our step, our forward, the plain step) run round
after round, and ratios are medians of each round's own.
Prints images/s, the time split (forward / backward / optimizer) and, on GPU, model FLOP
utilisation from 2x the forward FLOPs (frozen weights need no weight gradients).

    python benchmarks/step.py --models tiny,ViT-B-16 --pefts adaptformer,full,none --batch 32
    python benchmarks/step.py --device cuda --models ViT-B-16 --batch 256 --precision bf16 --json
    python benchmarks/step.py --models ViT-B-16-quickgelu --pefts adaptformer --batch 8 --baseline 45c9413

With --baseline REF each model and module is measured by fresh processes of REF's code and of this
checkout's, one after the other, --repeat times; medians of each side and their ratio are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from lift_dist.config import ModelConfig, OptimConfig
from lift_dist.engine.flops import forward_flops_per_image, utilisation

try:
    from lift_dist.engine.optimizer import build_optimizer
except ImportError:  # a --baseline checkout from before the optimizer had its own module (no DeepSpeed import for it)

    def build_optimizer(o, params):  # what that trainer built: torch's default SGD
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
from lift_dist.model.lift_model import build_model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class LoraWeight(torch.nn.Module):
    """W (3D, D) -> W + [ΔW_q; 0; ΔW_v], ΔW = (A B)ᵀ / r: the same q/v deltas as our lora sites."""

    def __init__(self, q, v):
        super().__init__()
        self.q, self.v = q, v

    def forward(self, w):
        dq, dv = ((m.lora_A @ m.lora_B).t() * m.scaling for m in (self.q, self.v))
        return w + torch.cat([dq, torch.zeros_like(dq), dv])


def plain_model(name: str, peft: str, num_classes: int, device):
    """open_clip forward + hooks; all parameters require grad (the straightforward loop)."""
    model, clip = build_model(ModelConfig(name=name, peft=[peft], head_init="random"), num_classes)
    visual = clip.visual
    visual.proj = None  # the head reads the pre-projection feature, as in LIFT
    trainable = [p for _, p in model.trainable_named_parameters()]
    blocks = model.encoder.blocks
    for pb, rb in zip(blocks, visual.transformer.resblocks):
        if "adaptformer" in pb.sites:
            af, store = pb.sites["adaptformer"], {}
            rb.ln_2.register_forward_pre_hook(lambda m, a, store=store: store.__setitem__("x", a[0]))
            rb.register_forward_hook(lambda m, a, out, af=af, store=store: out + af(store["x"]))
        if "lora_q" in pb.sites:  # the usual way: the low-rank delta added to the attention's in-projection
            parametrize.register_parametrization(rb.attn, "in_proj_weight", LoraWeight(pb.sites["lora_q"], pb.sites["lora_v"]))
    visual.requires_grad_(True)
    head = model.head

    def forward(x):
        return head(visual(x))

    modules = torch.nn.ModuleList([visual, head, *[pb.sites for pb in blocks]]).to(device)
    return forward, trainable, modules


def autocast(precision, device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def step_timer(forward, opt, x, y, precision, device):
    """One training step per call: (forward, backward, optimizer) seconds."""

    def step():
        sync(device)
        t0 = time.perf_counter()
        with autocast(precision, device):
            loss = F.cross_entropy(forward(x).float(), y)
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    return step


def forward_timer(forward, x, precision, device):
    """The same forward without autograd, seconds per call (the floor's unit: a frozen-backbone step
    needs about this again for the input gradients, nothing for frozen weight gradients)."""

    def run_forward():
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(precision, device):
            forward(x)
        sync(device)
        return time.perf_counter() - t0

    return run_forward


def summary(times, n):
    """The median step (robust to other load on the machine), per image, and its split."""
    f, b, o = sorted(times, key=sum)[len(times) // 2]
    total = f + b + o
    return {"images_per_s": n / total, "ms_per_image": 1000 * total / n,
            "forward_share": f / total, "backward_share": b / total, "optimizer_share": o / total}


def interleaved(timers, steps, warmup):
    """Every timer once per round, round after round, so that a slow spell of a shared machine
    falls on all of them alike; the first `warmup` rounds are dropped."""
    rounds = [[t() for t in timers] for _ in range(warmup + steps)]
    return rounds[warmup:]


def measure(name, peft, batch, steps, warmup, device, precision, num_classes, compile_model, channels_last, frozen_bf16=False):
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(name=name, peft=[peft], head_init="random"), num_classes)
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if frozen_bf16:  # frozen weights stored in bf16: no per-step autocast casts of 86M parameters
        for p in model.parameters():
            if not p.requires_grad and p.ndim >= 2:  # matmul / conv weights; LayerNorms stay fp32
                p.data = p.data.to(torch.bfloat16)
    res = model.encoder.image_size
    x = torch.randn(batch, 3, res, res, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    ours_fwd = torch.compile(model) if compile_model else model
    params = [p for _, p in model.trainable_named_parameters()]
    pf, pparams, _ = plain_model(name, peft, num_classes, device)
    sgd = OptimConfig(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=0.0)
    ours_opt = build_optimizer(sgd, params)  # the trainer's own (multi-tensor kernels)
    plain_opt = torch.optim.SGD(pparams, lr=sgd.lr, momentum=sgd.momentum)  # torch's default
    rounds = interleaved([step_timer(ours_fwd, ours_opt, x, y, precision, device), forward_timer(ours_fwd, x, precision, device),
                          step_timer(pf, plain_opt, x, y, precision, device)], steps, warmup)
    ours, plain = summary([r[0] for r in rounds], batch), summary([r[2] for r in rounds], batch)
    ours["forward_ms_per_image"] = 1000 * statistics.median(r[1] for r in rounds) / batch
    # Ratios are medians of each round's own ratio: the three timings of a round ran back to back.
    row = {"model": name, "peft": peft, "batch": batch, "precision": precision, "device": str(device),
           "compile": compile_model, "ours": ours, "plain": plain,
           "time_ratio": statistics.median(sum(r[0]) / sum(r[2]) for r in rounds),
           "step_over_forward": statistics.median(sum(r[0]) / r[1] for r in rounds)}
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    row["forward_gflops_per_image"] = forward_flops_per_image(model, res, device, bf16=frozen_bf16) / 1e9
    row |= {"gpu": gpu} | utilisation(ours["images_per_s"], row["forward_gflops_per_image"] * 1e9, gpu)
    return row


def side_by_side(a) -> list[dict]:
    """This script's measurement in fresh processes, REF's lift_dist against this checkout's, taking
    turns so that a slow spell of the machine falls on both."""
    from baseline import REPO, worktree  # noqa: PLC0415  (benchmarks/, the script's own folder; only with --baseline)

    # The child's arguments from the parsed values (never --baseline: a child measures, once).
    argv = ["--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup), "--device", a.device,
            "--precision", a.precision, "--num-classes", str(a.num_classes)]
    argv += [flag for flag, on in (("--compile", a.compile), ("--channels-last", a.channels_last),
                                   ("--frozen-bf16", a.frozen_bf16)) if on]

    def one(code: Path, model: str, peft: str, out: Path) -> dict:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, __file__, *argv, "--models", model, "--pefts", peft, "--json-out", str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} (PYTHONPATH={code}) failed:\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())[0]

    def med(runs: list[dict], key) -> float:
        return statistics.median(key(r) for r in runs)

    rows = []
    with worktree(a.baseline) as base, tempfile.TemporaryDirectory() as tmp:
        for model in a.models.split(","):
            for peft in a.pefts.split(","):
                runs = {"baseline": [], "now": []}
                for _ in range(a.repeat):
                    runs["baseline"].append(one(base, model, peft, Path(tmp, "row.json")))
                    runs["now"].append(one(REPO, model, peft, Path(tmp, "row.json")))
                side = {k: {"ms_per_image": med(v, lambda r: r["ours"]["ms_per_image"]),
                            "step_over_forward": med(v, lambda r: r["step_over_forward"]),
                            "over_plain": med(v, lambda r: r["time_ratio"])} for k, v in runs.items()}
                rows.append({"model": model, "peft": peft, "batch": a.batch, "ref": a.baseline, **side,
                             "now_over_baseline_time": side["now"]["ms_per_image"] / side["baseline"]["ms_per_image"]})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--models", default="tiny,ViT-B-16")
    p.add_argument("--pefts", default="adaptformer,full,none")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=9, help="timed rounds (one step of each, one forward)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--frozen-bf16", action="store_true", help="store frozen weights in bf16 (ours only)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--baseline", metavar="REF", help="also measure the lift-dist of this git commit, in turns")
    p.add_argument("--repeat", type=int, default=2, help="with --baseline: processes per side and model")
    p.add_argument("--json-out", type=Path, help="write the JSON rows to this file")
    a = p.parse_args()
    if a.baseline:
        rows = side_by_side(a)
        if a.json:
            print(json.dumps(rows, indent=2))
            return
        print(f"our step, {a.baseline} vs now, batch {a.batch}, medians of {a.repeat} processes each")
        for r in rows:
            b, n = r["baseline"], r["now"]
            print(f"{r['model']:<20} {r['peft']:<12} ms/img {b['ms_per_image']:8.1f} -> {n['ms_per_image']:8.1f} "
                  f"({r['now_over_baseline_time']:.2f}x time)  step/forward {b['step_over_forward']:.2f} -> {n['step_over_forward']:.2f}")
        return
    device = torch.device(a.device)
    rows = [measure(m, pe, a.batch, a.steps, a.warmup, device, a.precision, a.num_classes, a.compile, a.channels_last, a.frozen_bf16)
            for m in a.models.split(",") for pe in a.pefts.split(",")]
    if a.json_out:
        a.json_out.write_text(json.dumps(rows, indent=2))
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"training step, {a.device} {a.precision}, batch {a.batch}, median of {a.steps} steps "
          "(plain = open_clip MHA path, full autograd)")
    print(f"{'model':<10} {'module':<12} {'ours img/s':>10} {'plain img/s':>11} {'ours/plain time':>15} {'step/forward':>12} "
          f"{'fwd/bwd/opt %':>16} {'TFLOP/s':>8} {'MFU':>6}")
    for r in rows:
        o = r["ours"]
        split = f"{100 * o['forward_share']:.0f}/{100 * o['backward_share']:.0f}/{100 * o['optimizer_share']:.0f}"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['model']:<10} {r['peft']:<12} {o['images_per_s']:>10.1f} {r['plain']['images_per_s']:>11.1f} "
              f"{r['time_ratio']:>15.2f} {r['step_over_forward']:>12.2f} {split:>16} {r['train_tflops']:>8.3f} {mfu:>6}")


if __name__ == "__main__":
    main()
