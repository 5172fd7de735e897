"""Arguments of `lift-dist demo`."""

from __future__ import annotations

import argparse

RUN = "lift_dist.demo:run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="keep everything (images, shards, run) in this directory")
    p.add_argument("--ranks", type=int, default=2, help="gloo processes (default 2)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--imbalance", type=float, default=50.0)
    p.add_argument("--max-per-class", type=int, default=150)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--workers", type=int, default=1, help="data workers per rank")
    p.add_argument("--seed", type=int, default=0)
