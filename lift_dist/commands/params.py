"""Arguments of `lift-dist params`."""

from __future__ import annotations

import argparse

from lift_dist.presets import RECIPES

RUN = "lift_dist.params:run"
DESCRIPTION = """Trainable parameters of a model + module(s) for C classes, per tensor group (no download), e.g.
  lift-dist params --model ViT-B-16 --peft sparse --recipe lift_plus --num-classes 1000"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name (or 'tiny')")
    p.add_argument("--peft", default="adaptformer", help="module(s), comma-separated, e.g. adaptformer or lora,ssf")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--recipe", choices=RECIPES, help="size and initialise the modules as this recipe does (default: "
                                                      "the methods' own defaults, which are LIFT's)")
    p.add_argument("--r", type=int, default=None, help="bottleneck r (adaptformer, adapter, lora)")
    p.add_argument("--alpha", type=float, default=None, help="sparse fraction α in (0, 1]")
    p.add_argument("--layers", default=None, help="all | none | last:K | 0,5,11")
    p.add_argument("--head", default=None, help="cosine (default) | linear | l2 | layernorm")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
