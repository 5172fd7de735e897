"""Arguments of `lift-dist launch` (also `python launch/slurm.py`)."""

from __future__ import annotations

import argparse

RUN = "lift_dist.launch:run"
DESCRIPTION = """Submit a multi-node lift-dist training job to Slurm through submitit. Training arguments follow `--`:
  lift-dist launch --nodes 4 --gpus-per-node 8 --partition gpu --time 240 -- \\
      --preset inat2018/lift --shards /data/inat --out runs/inat
or, after `-- predict`, the arguments of a distributed prediction of a shard split:
  lift-dist launch --nodes 2 --gpus-per-node 8 -- predict --run runs/inat --shards /data/inat --out preds.parquet"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=1)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpus-per-node", type=int, help="one task per GPU")
    g.add_argument("--tasks-per-node", type=int, help="tasks per node on CPU clusters")
    p.add_argument("--partition")
    p.add_argument("--time", type=int, default=60, help="time limit in minutes")
    p.add_argument("--account")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem", help="memory per node, e.g. 64G")
    p.add_argument("--job-name", default="lift-dist")
    p.add_argument("--folder", default="slurm-logs/%j", help="submitit log folder (%%j = job id)")
    p.add_argument("--max-requeues", type=int, default=3,
                   help="requeues allowed after time-outs (submitit's limit; preempted jobs are always requeued)")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit with its status")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch directives and the task command; submit nothing")
    p.add_argument("--local", action="store_true", help="run the same path with submitit's local executor (no Slurm)")
    p.add_argument("train_args", nargs="*", metavar="-- TRAIN-ARGS",
                   help="`lift-dist train` arguments after --, or `predict` and `lift-dist predict --shards` arguments")
