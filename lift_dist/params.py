"""`lift-dist params`: the trainable-parameter report of a model + modules + recipe for C classes, built
from a randomly initialised model (nothing is downloaded), with the count of every tensor group, so a
paper's table (LIFT Tables 17-19, LIFT+'s parameter tables) can be checked in one command."""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

from lift_dist.config import ModelConfig
from lift_dist.errors import ConfigError
from lift_dist.model.lift_model import build_model
from lift_dist.presets import RECIPES, recipe_layer
from lift_dist.validation import validate

_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.")


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The recipe's model settings (how it sizes and initialises modules), then the command line's."""
    if args.num_classes < 1:
        raise ConfigError(f"--num-classes must be >= 1, got {args.num_classes}")
    data = dict(recipe_layer(args.recipe).get("model", {})) if args.recipe else {}
    data |= {"name": args.model, "pretrained": None, "peft": args.peft, "head_init": "random"}
    data |= {k: v for k, v in (("r", args.r), ("alpha", args.alpha), ("layers", args.layers), ("head", args.head)) if v is not None}
    return validate(ModelConfig, data, prefix="model")


def tensor_groups(model) -> list[dict]:
    """Trainable tensors grouped by name with the block index taken out: how many blocks hold the
    group, the entries per block, the total."""
    per_block: dict[str, dict[int, int]] = defaultdict(dict)
    for name, p in model.trainable_named_parameters():
        m = _BLOCK.match(name)
        key = name[m.end():].replace("sites.", "").replace("weights.", "sparse.") if m else name
        per_block[key][int(m.group(1)) if m else -1] = p.numel()
    rows = []
    for key, blocks in per_block.items():
        sizes = set(blocks.values())
        rows.append({"group": key, "blocks": len(blocks) if -1 not in blocks else 0,
                     "per_block": sizes.pop() if len(sizes) == 1 and -1 not in blocks else None, "total": sum(blocks.values())})
    return rows


def parameter_report(cfg: ModelConfig, num_classes: int) -> dict:
    model, _ = build_model(cfg, num_classes)
    return model.parameter_report() | {"groups": tensor_groups(model)}


def format_table(rep: dict, recipe: str | None) -> str:
    rows = [("model", rep["model"]), ("recipe", recipe or "(none: the methods' own defaults, LIFT's)"),
            ("modules", ", ".join(rep["modules"])), ("classes", f"{rep['num_classes']:,}")]
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
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    g = rep["groups"]
    gw = max([len("tensor group")] + [len(r["group"]) for r in g])
    lines += ["", f"{'tensor group':<{gw}}  {'blocks':>6}  {'per block':>11}  {'total':>12}"]
    for r in g:
        per = f"{r['per_block']:,}" if r["per_block"] is not None else "-"
        lines.append(f"{r['group']:<{gw}}  {r['blocks'] or '-':>6}  {per:>11}  {r['total']:>12,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rep = parameter_report(model_config(args), args.num_classes)
    print(json.dumps(rep | {"recipe": args.recipe}, indent=2) if args.json else format_table(rep, args.recipe))
    return 0


__all__ = ["RECIPES", "model_config", "parameter_report", "run", "tensor_groups"]
