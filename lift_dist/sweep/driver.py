"""The sweep driver: checks, the sweep's identity, the hold-out split, the Tuner, the summary."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from lift_dist.commands import train as train_command
from lift_dist.config import RunConfig
from lift_dist.data.location import is_remote
from lift_dist.data.manifest import read_manifest
from lift_dist.errors import ConfigError
from lift_dist.sweep.holdout import make_holdout
from lift_dist.sweep.identity import claim_identity, next_experiment_name, sweep_identity
from lift_dist.sweep.space import load_space, to_tune
from lift_dist.sweep.summary import plot_results, summarise
from lift_dist.sweep.trial import METRICS, LiftTrial
from lift_dist.train import config_from_args

__all__ = ["plot_results", "run", "run_sweep"]


def base_config(args, shards: Path, holdout: Path | None = None) -> RunConfig:
    """The configuration every trial starts from (on the hold-out split when `holdout` is given)."""
    argv = (["--preset", args.preset] if args.preset else []) + list(args.train_args)
    argv += [x for o in args.overrides for x in ("--set", o)] + ["--set", f"data.shards={holdout or shards}"]
    if holdout is not None:
        argv += ["--set", "data.train_split=train", "--set", "data.eval_split=val", "--set", "eval_every_epochs=1",
                 "--set", "data.tte=false"]
    p = argparse.ArgumentParser(prog="lift-dist sweep -- (training arguments)")
    train_command.add_arguments(p)
    return config_from_args(p.parse_args(argv))


def check_args(args) -> None:
    if args.metric not in METRICS:
        raise ConfigError(f"--metric {args.metric} is not valid; choose one of {', '.join(METRICS)}")
    if args.backend == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--backend slurm needs `sbatch` on PATH; use --backend local on a machine without Slurm")
    for flag, v in (("--num-samples", args.num_samples), ("--max-concurrent", args.max_concurrent + 1),
                    ("--val-per-class", args.val_per_class)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1" + (" (0: no limit)" if flag == "--max-concurrent" else ""))


def make_tuner(args, space: dict, base: RunConfig, out: Path, seed: int):
    """A new Tune experiment, also for `--resume`: the seeded search gives trial k the same point of the
    space as before, and the trial carries on from what its run directory holds."""
    param_space = to_tune(space) | {"_base": base.model_dump(mode="json"), "_backend": args.backend, "_metric": args.metric,
                                    "_epochs": base.optim.epochs, "_sweep": str(out), "_launch_args": shlex.split(args.launch),
                                    "_cpus": args.cpus_per_trial}
    trainable = tune.with_resources(LiftTrial, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    epochs = base.optim.epochs
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=args.grace_period, reduction_factor=2)
                 if args.scheduler == "asha" else FIFOScheduler())
    # The concurrency limit goes to the search algorithm: Tune ignores max_concurrent_trials beside one.
    search = BasicVariantGenerator(random_state=seed, max_concurrent=args.max_concurrent)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=args.metric, mode="max", num_samples=args.num_samples, scheduler=scheduler,
                                    search_alg=search, reuse_actors=True),  # LiftTrial.reset_config
        run_config=tune.RunConfig(name=next_experiment_name(out), storage_path=str(out), stop={"training_iteration": epochs},
                                  failure_config=tune.FailureConfig(max_failures=args.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=1), verbose=1))


def run_sweep(args) -> dict:
    """Check everything, hold out the validation split, run (or resume) the experiment, summarise."""
    check_args(args)
    out = Path(args.out).absolute()
    space = load_space(args.space)
    shards = args.shards if is_remote(args.shards) else Path(args.shards).absolute()
    full = base_config(args, shards)  # every setting checked before any trial
    d = full.data
    for split in (d.train_split, d.eval_split):  # missing shards: fail before any trial
        read_manifest(shards, split, d.shard_pipe, d.shard_retries)
    identity = claim_identity(out, sweep_identity(args, space, full.model_dump(mode="json"), shards), args.resume)
    holdout = make_holdout(shards, out / "data", d.train_split, args.val_per_class, full.seed, d.shard_pipe, d.shard_retries)
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             configure_logging=False)
    grid = make_tuner(args, space, base_config(args, shards, holdout), out, identity["seed"]).fit()
    return summarise(grid, space, args, shards, full, out)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(run_sweep(args), indent=2))
    return 0
