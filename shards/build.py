#!/usr/bin/env python3
"""Build WebDataset shard sets for lift-dist: `python shards/build.py --help` (runs from a checkout
without installing; the logic lives in lift_dist.shards)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lift_dist.shards.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
