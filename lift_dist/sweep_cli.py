"""Command line of `tune/sweep.py` (see lift_dist.sweep)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from lift_dist.errors import LiftError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/sweep.py", description=__doc__)
    p.add_argument("--preset", help="dataset[/recipe] the trials start from")
    p.add_argument("--shards", required=True, help="shard directory (its train split is split into train/val)")
    p.add_argument("--space", help="YAML restricting or extending the default space")
    p.add_argument("--backend", choices=["local", "slurm"], default="local")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--metric", default="mean_class", help="overall | mean_class | head | medium | tail")
    p.add_argument("--out", required=True)
    p.add_argument("--val-per-class", type=int, default=5, help="held-out validation images per class")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial")
    p.add_argument("--max-concurrent", type=int, default=0)
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0)
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs Ray may use on this machine")
    p.add_argument("--launch", default="", help="launcher options for --backend slurm, e.g. \"--nodes 2 --tasks-per-node 1\"")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="training setting for every trial")
    p.add_argument("--seed", type=int, default=None, help="seed of the random search (reproducible trial configs)")
    p.add_argument("--resume", action="store_true", help="resume a killed sweep in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    args.launch_args = shlex.split(args.launch)
    try:
        from lift_dist.sweep import run_sweep

        summary = run_sweep(args, train_args)
    except LiftError as e:
        print(f"tune/sweep.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
