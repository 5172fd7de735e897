"""Ray Tune sweeps over the lightweight module, its size (r / α / prompt length), the head scale σ and the
learning rate (`lift-dist sweep`, `python tune/sweep.py`).

    space     the search space, derived from the PEFT registry
    holdout   the validation split held out from the training shards (the objective; never the test set)
    trial     one trial = one training run, local process or Slurm job, its config a resolved YAML file
    summary   results.parquet, best.yaml, the best run on the test split, the plot
    identity  SWEEP/sweep.json: what `--resume` must find unchanged (it never reads Ray's pickled state)
"""

from __future__ import annotations

import importlib

# Loaded on first use: every Ray worker imports this package to reach `trial`, and the driver's imports
# (the shard builder, the training command) would cost each trial's actor seconds of start-up.
_DRIVER = ("plot_results", "run", "run_sweep")

__all__ = list(_DRIVER)


def __getattr__(name: str):
    if name in _DRIVER:
        return getattr(importlib.import_module("lift_dist.sweep.driver"), name)
    raise AttributeError(f"module 'lift_dist.sweep' has no attribute {name!r}")
