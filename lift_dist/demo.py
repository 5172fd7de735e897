"""`lift-dist demo`: the whole system end to end on CPU in a few minutes.

Generates a small long-tailed image dataset (20 visibly different classes, imbalance 50), builds
WebDataset shards with the shard builder, trains the built-in `tiny` CLIP with AdaptFormer on 2 gloo
ranks under torchrun + DeepSpeed, evaluates with test-time ensembling and prints overall / head /
medium / tail accuracy next to chance.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lift_dist.errors import LiftError
from lift_dist.run_dir import RunDir
from lift_dist.shards import build_image_folder
from lift_dist.synthetic import long_tail_counts, write_image_folder

DEMO_SETTINGS = [
    "model.name=tiny",
    "model.pretrained=null",
    "model.peft=[adaptformer]",
    "model.head_init=semantic",
    "optim.lr=0.05",
    "optim.batch_size=32",
    "data.augment=lift",
    "data.tte=true",
    "data.tte_expand=8",  # 64 px images: the same relative margin as 224 + 24
    "data.shuffle_buffer=500",
    "log_every_steps=5",
    "eval_every_epochs=2",  # validation points for the learning curves of the report
]


def build_demo_shards(work: Path, args) -> Path:
    counts = long_tail_counts(args.classes, args.max_per_class, args.imbalance)
    shards = work / "shards"
    if (shards / "train-shards.parquet").is_file() and (shards / "test-shards.parquet").is_file():
        print(f"[demo] reusing shards in {shards}")
        return shards
    print(f"[demo] generating {sum(counts)} training images in {args.classes} classes "
          f"({counts[0]} … {counts[-1]} per class, imbalance {counts[0] / counts[-1]:.0f}) and "
          f"{args.test_per_class * args.classes} test images")
    write_image_folder(work / "images" / "train", counts, seed=args.seed)
    write_image_folder(work / "images" / "test", [args.test_per_class] * args.classes, seed=args.seed + 1)
    shard_size = max(8, math.ceil(sum(counts) / (4 * args.ranks * max(1, args.workers))))
    build_image_folder(work / "images" / "train", shards, "train", shard_size=shard_size, seed=args.seed)
    build_image_folder(work / "images" / "test", shards, "test", train_counts_from=shards, shard_size=shard_size, seed=args.seed)
    return shards


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    if args.out:
        work = Path(args.out)
        work.mkdir(parents=True, exist_ok=True)
        return _run(work, args, t0)
    with tempfile.TemporaryDirectory(prefix="lift-dist-demo-") as tmp:
        return _run(Path(tmp), args, t0)


def _run(work: Path, args, t0: float) -> int:
    shards = build_demo_shards(work, args)
    run_dir = work / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ranks}",
        "-m", "lift_dist", "train", "--shards", str(shards), "--out", str(run_dir), "--device", "cpu",
        "--epochs", str(args.epochs), "--workers", str(args.workers), "--set", f"seed={args.seed}",
    ]
    for s in DEMO_SETTINGS:
        cmd += ["--set", s]
    print(f"[demo] training on {args.ranks} gloo ranks (torchrun + DeepSpeed): torchrun -m lift_dist train --shards {shards} ...",
          flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // args.ranks)))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise LiftError(f"demo training failed (exit {proc.returncode}); see {RunDir(run_dir).log_file}")
    metrics = RunDir(run_dir).read_metrics()
    chance = 1.0 / args.classes
    print(f"\n[demo] test accuracy with TTE ({metrics['eval_samples']} images, {args.classes} classes, chance {100 * chance:.1f}%):")
    for k in ("overall", "head", "medium", "tail"):
        v = metrics[k]
        print(f"  {k:<8} {100 * v:6.2f}%" if v is not None else f"  {k:<8}    n/a")
    print(f"  without TTE: overall {100 * metrics['no_tte']['overall']:.2f}%")
    try:  # the HTML report is an extra (jinja2, matplotlib): the demo trains and evaluates without it
        from lift_dist.report import write_report  # noqa: PLC0415  (the report extra)
    except ImportError as e:
        print(f"[demo] no report ({e.name} is not installed: pip install 'lift-dist[report]')")
    else:
        print(f"[demo] report: {write_report([run_dir], work / 'report', title='lift-dist demo')}")
    print(f"[demo] trainable parameters: {metrics['trainable_params']:,} ({metrics['module_params']:,} AdaptFormer + "
          f"{metrics['head_params']:,} head); run directory: {run_dir}; {time.time() - t0:.0f}s in all")
    return 0
