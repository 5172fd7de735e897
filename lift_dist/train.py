"""`lift-dist train`: one process, or one of N under torchrun, the deepspeed launcher or srun (rank and
world size come from the environment). Arguments: lift_dist.commands.train."""

from __future__ import annotations

import argparse

from lift_dist.config import config_yaml, load_config
from lift_dist.engine.preflight import preflight

SHORTCUTS = {
    "shards": "data.shards", "out": "out", "resume": "resume", "model": "model.name", "pretrained": "model.pretrained",
    "peft": "model.peft", "epochs": "optim.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size",
    "workers": "data.workers", "device": "device",
}


def config_from_args(args: argparse.Namespace):
    overrides = [f"{key}={getattr(args, attr)}" for attr, key in SHORTCUTS.items() if getattr(args, attr, None) is not None]
    return load_config(args.preset, args.config, overrides + list(args.overrides))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    plan = preflight(cfg)
    # The trainer (DeepSpeed, open_clip, TensorBoard: seconds of imports) only once settings, data and
    # run directory have passed their checks, so that a bad input is reported at once.
    from lift_dist.engine.trainer import train_plan  # noqa: PLC0415

    train_plan(plan)
    return 0


if __name__ == "__main__":  # `python -m lift_dist.train ...` = `lift-dist train ...`
    import sys

    from lift_dist.cli import main

    raise SystemExit(main(["train", *sys.argv[1:]]))
