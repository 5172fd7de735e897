"""Arguments of `lift-dist export`."""

from __future__ import annotations

import argparse

RUN = "lift_dist.export:run"
DESCRIPTION = """A trained run as one self-contained inference model (backbone + merged modules + head, with
class names and preprocessing as metadata), e.g.
  lift-dist export --run runs/places --format onnx --out places.onnx
  lift-dist predict --model places.onnx photo.jpg"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--format", required=True, choices=["safetensors", "torchscript", "onnx"])
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--checkpoint", help="checkpoint directory (default: the run's latest)")
