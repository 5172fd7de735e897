"""Arguments of `lift-dist predict`."""

from __future__ import annotations

import argparse

RUN = "lift_dist.predict:run"
DESCRIPTION = """Class probabilities for images or a shard split, from a run or an exported model, e.g.
  lift-dist predict --run runs/places photo.jpg --tte --top-k 5 --format json
  lift-dist predict --model places.onnx photo.jpg
  torchrun --nproc-per-node 4 -m lift_dist predict --run-dir runs/places --shards /data/places --out preds.parquet
(under torchrun spell --run as --run-dir: torchrun takes `--run` for its own --run-path)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--run", "--run-dir", dest="run", help="run directory (config.yaml, classes.json, checkpoints/)")
    p.add_argument("--model", help="a model file written by `lift-dist export` (safetensors, TorchScript or ONNX)")
    p.add_argument("--checkpoint", help="checkpoint directory (default: the run's latest)")
    p.add_argument("--tte", action="store_true", help="test-time ensembling (five crops, logits averaged)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--shards", help="predict every sample of a shard split instead of image files")
    p.add_argument("--split", default="test", help="split of --shards (default test)")
    p.add_argument("--shard-pipe", help="for s3:// gs:// ... shards: a command writing {url} to stdout (default: the run's "
                                        "data.shard_pipe)")
    p.add_argument("--out", help="Parquet file for --shards predictions")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the GPU if there is one")
    p.add_argument("--precision", choices=["run", "fp32", "bf16", "fp16"], default="run",
                   help="a run's model computes in this precision (run: the run's eval_precision, e.g. fp16 for lift_plus, "
                        "which is slow on a CPU); exported models keep their own")
