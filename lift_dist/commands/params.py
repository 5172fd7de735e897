"""Arguments of `lift-dist params`."""

from __future__ import annotations

import argparse

RUN = "lift_dist.params:run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name (or 'tiny')")
    p.add_argument("--peft", default="adaptformer", help="module(s), comma-separated, e.g. adaptformer or lora,ssf")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--r", type=int, default=None, help="bottleneck r (adaptformer, adapter, lora)")
    p.add_argument("--alpha", type=float, default=None, help="sparse fraction α in (0, 1]")
    p.add_argument("--layers", default=None, help="all | none | last:K | 0,5,11")
    p.add_argument("--head", default="cosine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
