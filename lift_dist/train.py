"""`lift-dist train` / `python -m lift_dist.train`: one process, or one of N under torchrun, the
deepspeed launcher or srun (rank and world size come from the environment)."""

from __future__ import annotations

import argparse
import json
import sys

from lift_dist.config import available_presets, load_config
from lift_dist.errors import LiftError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"dataset[/recipe], e.g. places_lt/lift_plus; datasets: {', '.join(available_presets())}")
    p.add_argument("--config", help="YAML file with settings (applied after the preset)")
    p.add_argument("--shards", help="shard directory built by shards/build.py (= data.shards)")
    p.add_argument("--out", help="run directory (= out)")
    p.add_argument("--resume", help="'latest' or a checkpoint directory")
    p.add_argument("--model", help="open_clip model name or 'tiny' (= model.name)")
    p.add_argument("--pretrained", help="open_clip tag or weights file (= model.pretrained)")
    p.add_argument("--peft", help="module(s), comma-separated (= model.peft)")
    p.add_argument("--epochs", type=int, help="= optim.epochs")
    p.add_argument("--lr", type=float, help="= optim.lr")
    p.add_argument("--batch-size", type=int, help="global batch (= optim.batch_size)")
    p.add_argument("--workers", type=int, help="data workers per rank (= data.workers)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set optim.zero_stage=1 --set data.tte=false (repeatable)")
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


SHORTCUTS = {
    "shards": "data.shards", "out": "out", "resume": "resume", "model": "model.name", "pretrained": "model.pretrained",
    "peft": "model.peft", "epochs": "optim.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size",
    "workers": "data.workers", "device": "device",
}


def config_from_args(args: argparse.Namespace):
    overrides = [f"{key}={getattr(args, attr)}" for attr, key in SHORTCUTS.items() if getattr(args, attr, None) is not None]
    return load_config(args.preset, args.config, overrides + list(args.overrides))


def run(args: argparse.Namespace) -> int:
    from lift_dist.engine.trainer import train

    cfg = config_from_args(args)
    metrics = train(cfg)
    if metrics and getattr(args, "print_json", False):
        print(json.dumps(metrics, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lift-dist train", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LiftError as e:
        print(f"lift-dist train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
