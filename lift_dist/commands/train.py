"""Arguments of `lift-dist train`."""

from __future__ import annotations

import argparse

from lift_dist.presets import available_presets

RUN = "lift_dist.train:run"
DESCRIPTION = """Train on a shard directory. One process, or one of N under torchrun / srun, e.g.
  torchrun --nproc-per-node 8 -m lift_dist train --preset inat2018/lift --shards DIR --out RUN
Every setting is checked before anything starts; `--print-config` shows the resolved configuration."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"dataset[/recipe], e.g. places_lt/lift_plus; datasets: {', '.join(available_presets())}")
    p.add_argument("--config", help="YAML file with settings (applied after the preset), e.g. a run's config.yaml")
    p.add_argument("--shards", help="shard directory built by `lift-dist shards` (= data.shards)")
    p.add_argument("--out", help="run directory (= out)")
    p.add_argument("--resume", help="'latest' or a checkpoint directory (= resume)")
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
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration (YAML) and exit")
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
