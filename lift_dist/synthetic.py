"""A small long-tailed image dataset generated on the fly, for the demo and tests.

Each class is a visible pattern (stripes at an angle, rings, checks or blobs) in its own colour pair,
with per-image random phase, scale, offset and noise, so it is learnable but not trivial.
Counts follow n_c = int(n_max * (1 / imbalance) ** (c / (C - 1))), the usual long-tail profile.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

PATTERNS = ("stripes", "rings", "checks", "blobs")


def long_tail_counts(num_classes: int, n_max: int, imbalance: float) -> list[int]:
    return [max(1, int(n_max * (1.0 / imbalance) ** (c / max(1, num_classes - 1)))) for c in range(num_classes)]


def class_style(c: int, num_classes: int) -> tuple[str, float, np.ndarray, np.ndarray]:
    pattern = PATTERNS[c % len(PATTERNS)]
    hue = (c * 0.61803398875) % 1.0  # golden-ratio hues: neighbours far apart
    fg = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255
    bg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.35, 0.35)) * 255
    angle = (c // len(PATTERNS)) * np.pi / max(1, (num_classes + len(PATTERNS) - 1) // len(PATTERNS))
    return pattern, angle, fg, bg


def render(c: int, num_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    pattern, angle, fg, bg = class_style(c, num_classes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq = rng.uniform(3.0, 5.0)
    phase = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    if pattern == "stripes":
        a = angle + rng.normal(0, 0.1)
        field = np.sin(2 * np.pi * freq * (xx * np.cos(a) + yy * np.sin(a)) + phase)
    elif pattern == "rings":
        field = np.sin(2 * np.pi * freq * np.hypot(xx - cx, yy - cy) + phase)
    elif pattern == "checks":
        field = np.sign(np.sin(2 * np.pi * freq * xx + phase) * np.sin(2 * np.pi * freq * yy + phase))
    else:
        field = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.08 + 0.04 * rng.random()) ** 2)) * 2 - 1
    t = (field[..., None] + 1) / 2
    img = t * fg + (1 - t) * bg
    img += rng.normal(0, 18, size=img.shape)  # sensor-like noise
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_image_folder(root: str | Path, counts: list[int], size: int = 80, seed: int = 0, class_prefix: str = "class") -> list[str]:
    """Write `root/<class name>/<i>.jpg`; returns the class names (sorted order = label order)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"{class_prefix}_{c:02d}_{class_style(c, len(counts))[0]}" for c in range(len(counts))]
    for c, (name, n) in enumerate(zip(names, counts)):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            render(c, len(counts), size, rng).save(d / f"{i:05d}.jpg", quality=90)
    return names
