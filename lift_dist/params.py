"""`lift-dist params`: the trainable-parameter report, built from a randomly initialised model."""

from __future__ import annotations

import argparse
import json

from lift_dist.config import ModelConfig
from lift_dist.model.lift_model import build_model
from lift_dist.validation import validate


def parameter_report(cfg: ModelConfig, num_classes: int) -> dict:
    model, _ = build_model(cfg, num_classes)
    return model.parameter_report()


def format_table(rep: dict) -> str:
    rows = [
        ("model", rep["model"]),
        ("modules", ", ".join(rep["modules"])),
        ("classes", f"{rep['num_classes']:,}"),
    ]
    for key in ("r", "alpha", "length"):
        if key in rep:
            rows.append((key, str(rep[key])))
    rows += [
        ("module parameters", f"{rep['peft']:,}"),
        ("head parameters", f"{rep['head']:,}"),
        ("trainable total", f"{rep['trainable']:,}"),
        ("frozen", f"{rep['frozen']:,}"),
        ("trainable share", f"{100 * rep['trainable'] / max(1, rep['trainable'] + rep['frozen']):.3f}%"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    cfg = validate(ModelConfig, {"name": args.model, "pretrained": None, "peft": args.peft, "r": args.r, "alpha": args.alpha,
                                 "layers": args.layers, "head": args.head, "head_init": "random"}, prefix="model")
    rep = parameter_report(cfg, args.num_classes)
    print(json.dumps(rep, indent=2) if args.json else format_table(rep))
    return 0
