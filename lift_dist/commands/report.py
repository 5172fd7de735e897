"""Arguments of `lift-dist report`."""

from __future__ import annotations

import argparse

RUN = "lift_dist.report:run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `lift-dist train`")
    p.add_argument("--out", required=True, help="output directory: index.html and the PNG plots are written there")
    p.add_argument("--title", default="LIFT run report")
    p.add_argument("--top", type=int, default=10, help="rows in each most-confused tail classes table")
