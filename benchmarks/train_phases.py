"""Where a real training step's time goes: data wait / forward / backward / all-reduce / optimizer.

Runs the actual trainer (torchrun + DeepSpeed, shards built from photo-like 800 x 600 JPEGs the way
`shards/build.py` builds them) with `profile_phases=true`, which synchronises the device around each
phase and times DeepSpeed's gradient all-reduce apart from the rest of backward. Prints images/s,
the split per model and module (last epoch of each run), the achieved training TFLOP/s (2x forward
FLOPs) and, on a GPU, model FLOP utilisation. `--no-profile` times the same runs without the
per-phase synchronisation (the throughput to quote; the split needs the profile).

    python benchmarks/train_phases.py                                   # tiny, 2 gloo ranks, CPU
    python benchmarks/train_phases.py --models tiny,ViT-B-16 --pefts adaptformer,none --batch 16 --json
    python benchmarks/train_phases.py --device cuda --nproc 1 --models ViT-B-16 --batch 256 --images 4096
    python benchmarks/train_phases.py --pefts none,partial --augment none [--feature-cache]   # cache gain
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_dist.engine.flops import forward_flops_per_image, utilisation  # noqa: E402
from lift_dist.model.lift_model import ModelConfig, build_model  # noqa: E402
from lift_dist.shards import build_image_folder  # noqa: E402
from lift_dist.shards.synthetic import photo_jpegs  # noqa: E402

PHASES = ("data", "forward", "backward", "all_reduce", "optimizer")


def make_shards(root: Path, images: int, classes: int) -> Path:
    for i, data in enumerate(photo_jpegs(images, 800, 600, seed=0)):
        d = root / "img" / f"c{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.jpg").write_bytes(data)
    out = root / "shards"
    per_shard = max(1, images // 8)
    build_image_folder(root / "img", out, "train", shard_size=per_shard, seed=0)
    build_image_folder(root / "img", out, "test", train_counts_from=out, shard_size=per_shard, seed=0)
    return out


def run_one(shards: Path, work: Path, model: str, peft: str, a) -> dict:
    out = work / f"{model}-{peft}"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={a.nproc}", "--standalone",
           "-m", "lift_dist.train", "--shards", str(shards), "--out", str(out), "--model", model, "--peft", peft,
           "--device", a.device, "--epochs", "2", "--batch-size", str(a.batch * a.nproc), "--workers", str(a.workers),
           "--set", "model.pretrained=null", "--set", "model.head_init=random", "--set", "data.tte=false",
           "--set", f"profile_phases={not a.no_profile}", "--set", f"precision={a.precision}", "--set", f"data.augment={a.augment}",
           "--set", f"compile={a.compile}"]
    if a.feature_cache:  # built in epoch 1's set-up, read from epoch 1 on: epoch 2 is the steady state
        cmd += ["--set", f"data.feature_cache={work / 'cache'}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"training failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    last = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()][-1]  # epoch 1 warms up
    row = {"model": model, "peft": peft, "augment": a.augment, "feature_cache": a.feature_cache, "ranks": a.nproc,
           "batch_per_rank": a.batch, "device": a.device, "precision": a.precision, "compile": a.compile,
           "profiled": not a.no_profile, "images_per_s": last["samples"] / last["time_s"]}
    if "phases_s" in last:
        t = last["phases_s"]
        total = sum(t[k] for k in PHASES)
        row |= {"seconds": t, "shares": {k: t[k] / total for k in PHASES}}
    res = int(yaml.safe_load((out / "config.yaml").read_text())["data"]["resolution"])
    flops = forward_flops_per_image(build_model(ModelConfig(name=model, peft=[peft], head_init="random"), a.classes)[0], res)
    gpu = torch.cuda.get_device_name() if a.device == "cuda" else None
    # Per GPU: each rank trains images_per_s / ranks.
    return row | {"forward_gflops_per_image": flops / 1e9, "gpu": gpu} | utilisation(row["images_per_s"] / a.nproc, flops, gpu)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny")
    p.add_argument("--pefts", default="adaptformer,full,none")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--batch", type=int, default=16, help="micro-batch per rank")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--augment", default="lift", choices=["lift", "mda", "none"])
    p.add_argument("--feature-cache", action="store_true", help="train from cached frozen features (needs --augment none)")
    p.add_argument("--compile", default="auto", choices=["auto", "always", "never"], help="the trainer's torch.compile setting")
    p.add_argument("--no-profile", action="store_true", help="no per-phase synchronisation: throughput only")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lift-phases-") as tmp:
        shards = make_shards(Path(tmp), a.images, a.classes)
        rows = [run_one(shards, Path(tmp), m, pe, a) for m in a.models.split(",") for pe in a.pefts.split(",")]
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"training step phases: {a.nproc} rank(s) x batch {a.batch}, {a.device} {a.precision}, "
          f"{a.workers} loader worker(s)/rank, augment {a.augment}{', cached features' if a.feature_cache else ''}, "
          "shards from 800x600 photo-like JPEGs (resized to 256 at build)")
    phases = " ".join(f"{k + ' %':>12}" for k in PHASES)
    print(f"{'model':<10} {'module':<12} {'img/s':>8}  {phases} {'TFLOP/s/rank':>12} {'MFU':>6}")
    for r in rows:
        split = " ".join(f"{100 * r['shares'][k]:>12.1f}" if "shares" in r else f"{'-':>12}" for k in PHASES)
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['model']:<10} {r['peft']:<12} {r['images_per_s']:>8.1f}  {split} {r['train_tflops']:>12.3f} {mfu:>6}")


if __name__ == "__main__":
    main()
