"""Bytes all-reduced per optimizer step against the trainable parameter count.

Measured: a real 2-rank gloo run (torchrun + DeepSpeed) of `tiny` on generated shards, with
DeepSpeed's own comms logger recording every collective. Then, for ViT-B/16 at ImageNet-LT size,
what each module implies (4 bytes per trainable fp32 gradient element), next to full fine-tuning.

    python benchmarks/comm.py [--pefts adaptformer,lora,none] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measured(peft: str, shards: Path, work: Path) -> dict:
    run = work / f"run-{peft}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lift_dist.train",
           "--shards", str(shards), "--out", str(run), "--model", "tiny", "--device", "cpu", "--workers", "1",
           "--epochs", "1", "--batch-size", "16", "--set", "model.pretrained=null", "--set", "data.tte=false",
           "--set", f"model.peft=[{peft}]", "--set", "max_steps=4"]
    env = dict(os.environ, LIFT_DIST_COMMS_LOG="1", OMP_NUM_THREADS="1")
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
    comms = json.loads((run / "comms-rank0.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    sizes = comms["ops"].get("all_reduce", {})
    grad = sum(int(b) * n for b, n in sizes.items() if int(b) > 64)  # gradient buckets
    small = sum(int(b) * n for b, n in sizes.items() if int(b) <= 64)  # DeepSpeed's scalar checks
    steps = comms["optimizer_steps"]
    return {"model": "tiny", "peft": peft, "trainable_params": metrics["trainable_params"],
            "allreduce_bytes_per_step": grad / steps, "scalar_allreduce_bytes_per_step": small / steps,
            "bytes_per_trainable_param": grad / steps / metrics["trainable_params"]}


def implied(peft: str) -> dict:
    from lift_dist.model.lift_model import ModelConfig, build_model

    model, _ = build_model(ModelConfig(name="ViT-B-16", peft=[peft], head_init="random"), 1000)
    n = model.parameter_report()["trainable"]
    return {"model": "ViT-B-16", "peft": peft, "classes": 1000, "trainable_params": n, "allreduce_bytes_per_step": 4 * n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pefts", default="adaptformer,lora,none")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    from lift_dist.shards import build_image_folder
    from lift_dist.synthetic import long_tail_counts, write_image_folder

    pefts = a.pefts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_image_folder(tmp / "img", long_tail_counts(10, 40, 10), size=48)
        build_image_folder(tmp / "img", tmp / "shards", "train", shard_size=20, progress=False)
        build_image_folder(tmp / "img", tmp / "shards", "test", train_counts_from=tmp / "shards", shard_size=40, progress=False)
        rows = [measured(pe, tmp / "shards", tmp) for pe in pefts]
    rows += [implied(pe) for pe in pefts + ["full"]]
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print("all-reduce per optimizer step (2 gloo ranks, DeepSpeed comms logger) vs trainable parameters")
    for r in rows:
        tag = "measured" if "bytes_per_trainable_param" in r else "implied "
        extra = f"  ({r['bytes_per_trainable_param']:.2f} B/param)" if "bytes_per_trainable_param" in r else ""
        print(f"  {tag} {r['model']:<9} {r['peft']:<12} {r['trainable_params']:>12,} params -> "
              f"{r['allreduce_bytes_per_step'] / 1e6:10.3f} MB/step{extra}")


if __name__ == "__main__":
    main()
