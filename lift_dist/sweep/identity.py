"""What makes a sweep the same sweep: SWEEP/sweep.json, written when it starts and compared on `--resume`.

A resumed sweep is a new Tune experiment over the same trials, not Ray's `Tuner.restore` (which unpickles
the experiment state, so a sweep directory handed to someone could run code). Its trials are the same
because the search is seeded and everything that shapes them is recorded here: trial k gets the same
point of the space, the same run directory SWEEP/runs/trial-k, and continues from what that run wrote.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from lift_dist.errors import ConfigError
from lift_dist.run_dir import read_json, write_json

RECORD = "sweep.json"


def sweep_identity(args, space: dict, base: dict, shards) -> dict:
    """Every setting that decides which trials exist and what each one trains (the seed may still be None)."""
    return json.loads(json.dumps({
        "shards": str(shards), "space": space, "seed": args.seed, "num_samples": args.num_samples,
        "scheduler": args.scheduler, "grace_period": args.grace_period, "metric": args.metric,
        "val_per_class": args.val_per_class,
        # Every trial gets its own out and resume=latest (trial_config): the driver's defaults, which
        # depend on the directory it was started from, shape nothing.
        "training": {k: v for k, v in base.items() if k not in ("out", "resume")},
    }))


def first_difference(old, new, path: str = ""):
    """(dotted key, old value, new value) of the first place two JSON values differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            d = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if d:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return next((d for i, (a, b) in enumerate(zip(old, new)) if (d := first_difference(a, b, f"{path}[{i}]"))), None)
    return None if old == new else (path, old, new)


def _is_started(out: Path) -> bool:
    """A trial has run there (a driver that stopped before any trial, say at the hold-out, can be rerun)."""
    return (out / "runs").is_dir()


def claim_identity(out: Path, identity: dict, resume: bool) -> dict:
    """The identity this run of the driver works under, seed filled in: recorded for a new sweep, or the
    recorded one for `--resume` after checking that nothing that shapes the trials changed."""
    record = out / RECORD
    if not resume:
        if _is_started(out):
            raise ConfigError(f"--out {out} already holds a sweep; add --resume to continue it, or give another --out")
        if identity["seed"] is None:  # drawn once and recorded: a resume must sample the same trials
            identity = identity | {"seed": secrets.randbelow(2**31)}
        out.mkdir(parents=True, exist_ok=True)
        write_json(record, identity)
        return identity
    if not record.is_file():
        older = (out / "tune").is_dir()
        why = "it was started by an older lift-dist (whose resume unpickled Ray's state)" if older else "nothing was started there"
        raise ConfigError(f"--resume: {out} holds no {RECORD} to resume from ({why}); start a new sweep in another --out")
    old = read_json(record, "sweep record")
    new = identity | {"seed": old.get("seed") if identity["seed"] is None else identity["seed"]}
    diff = first_difference(old, new)
    if diff:
        key, was, now = diff
        raise ConfigError(f"--resume: '{key}' was {json.dumps(was)} when the sweep started and is {json.dumps(now)} now; "
                          f"resume with the settings it started with (see {record}), or start a new sweep in another --out")
    return old


def next_experiment_name(out: Path) -> str:
    """Tune's folder for this run of the driver: `tune`, then `tune-2`, ... (an earlier one is kept, never read)."""
    if not (out / "tune").exists():
        return "tune"
    return next(f"tune-{k}" for k in range(2, 10**6) if not (out / f"tune-{k}").exists())
