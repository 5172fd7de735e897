#!/usr/bin/env python3
"""Build WebDataset shard sets for lift-dist (= `lift-dist shards`): `python shards/build.py --help`."""

import sys

from lift_dist.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["shards", *sys.argv[1:]], prog="shards/build.py"))
