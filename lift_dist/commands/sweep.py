"""Arguments of `lift-dist sweep` (also `python tune/sweep.py`)."""

from __future__ import annotations

import argparse

RUN = "lift_dist.sweep.driver:run"
DESCRIPTION = """Ray Tune sweep over module, r / alpha, sigma and learning rate; trials local or as Slurm jobs.
The objective is measured on a split held out from the training shards; the best trial is then evaluated
on the test split.
  lift-dist sweep --preset places_lt --shards DIR --num-samples 16 --out SWEEP
  lift-dist sweep ... --backend slurm --launch "--nodes 2 --gpus-per-node 8 --partition gpu"
  lift-dist sweep ... --resume          # after the driver was killed"""


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--max-concurrent", type=int, default=0, help="trials running at once (0: as many as resources allow)")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0)
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs Ray may use on this machine")
    p.add_argument("--launch", default="", help="launcher options for --backend slurm, e.g. \"--nodes 2 --tasks-per-node 1\"")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="training setting for every trial")
    p.add_argument("--seed", type=int, default=None, help="seed of the random search (reproducible trial configs)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device of the best run's test evaluation")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed sweep in --out with the same settings: its trials pick up their runs (Ray's "
                        "pickled state is not read)")
    p.add_argument("train_args", nargs="*", metavar="-- TRAIN-ARGS", help="more `lift-dist train` arguments, after --")
