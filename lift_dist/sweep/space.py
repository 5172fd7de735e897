"""The search space: the module, its size (each method declares which option sizes it: r, alpha or
length, see PeftMethod.size_parameter), the head scale σ and the learning rate.

A space file restricts or extends the default (`key: null` removes a dimension); every dimension is
one of choice / uniform / loguniform / randint. A size dimension applies only to the trials whose
module it sizes (r to adaptformer/adapter/lora, alpha to sparse, length to vpt-shallow/vpt-deep).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from ray import tune

from lift_dist.config import load_yaml
from lift_dist.errors import ConfigError
from lift_dist.peft import REGISTRY

SIZE_DIMENSIONS = sorted({m.size_parameter for m in REGISTRY.values() if m.size_parameter})
DIMENSIONS = ("module", *SIZE_DIMENSIONS, "scale", "lr")
DEFAULT_SPACE = {
    "module": {"choice": ["adaptformer", "sparse"]},
    "alpha": {"loguniform": [1e-3, 1e-1]},
    "r": {"choice": [4, 8, 16, 32, 64, 128, 256, 512]},
    "scale": {"uniform": [15.0, 35.0]},
    "lr": {"loguniform": [3e-3, 5e-2]},
}
KINDS = ("choice", "uniform", "loguniform", "randint")


def size_dimension(module: str) -> str | None:
    return REGISTRY[module].size_parameter


def load_space(path: str | None) -> dict:
    """Default space, restricted or extended by a YAML file (`key: null` removes a dimension)."""
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"space file {p} does not exist")
        try:
            user = load_yaml(p.read_text()) or {}
        except yaml.YAMLError as e:  # also a key given twice
            raise ConfigError(f"space file {p} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{p}: the space must be a mapping of key -> {{kind: values}}")
        for k, v in user.items():
            if v is None:
                space.pop(k, None)
            else:
                space[k] = v if isinstance(v, dict) else {"choice": v if isinstance(v, list) else [v]}
    validate_space(space)
    return space


INTEGER_DIMENSIONS = ("r", "length")


def _is_number(v, integer: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return isinstance(v, int) if integer else math.isfinite(v)


def _check_values(key: str, kind: str, values) -> None:
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"'{key}': choice needs a non-empty list")
        if key == "module":
            if not all(isinstance(v, str) for v in values):
                raise ConfigError(f"'module': choices must be module names, got {values}")
            return
    elif not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"'{key}': {kind} needs [low, high] with low < high, got {values}")
    integer = key in INTEGER_DIMENSIONS
    if key == "module" or (integer and kind in ("uniform", "loguniform")):
        raise ConfigError(f"'{key}' takes {'names' if key == 'module' else 'whole sizes'}: use choice"
                          + ("" if key == "module" else " or randint"))
    if not all(_is_number(v, integer or kind == "randint") for v in values):
        what = "whole numbers" if integer or kind == "randint" else "finite numbers"
        raise ConfigError(f"'{key}': {kind} values must be {what}, got {values}")
    if kind != "choice" and not values[0] < values[1]:
        raise ConfigError(f"'{key}': {kind} needs [low, high] with low < high, got {values}")
    if kind == "loguniform" and values[0] <= 0:
        raise ConfigError(f"'{key}': loguniform needs a positive lower bound, got {values[0]}")


def _check_bounds(key: str, lo, hi) -> None:
    if key == "alpha" and not (lo > 0 and hi <= 1):
        raise ConfigError(f"'alpha': the sparse fraction must lie in (0, 1], got [{lo}, {hi}]")
    if key in ("r", "length") and lo < 1:
        raise ConfigError(f"'{key}': sizes must be >= 1, got [{lo}, {hi}]")
    if key in ("scale", "lr") and lo <= 0:
        raise ConfigError(f"'{key}': values must be > 0, got [{lo}, {hi}]")


def validate_space(space: dict) -> None:
    for key, spec in space.items():
        if key not in DIMENSIONS:
            raise ConfigError(f"unknown search dimension '{key}'; valid: {', '.join(DIMENSIONS)}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"'{key}': give exactly one of {', '.join(KINDS)}, e.g. {key}: {{choice: [...]}}")
        kind, values = next(iter(spec.items()))
        _check_values(key, kind, values)
        if key == "module":
            bad = [m for m in values if m not in REGISTRY]
            if bad:
                raise ConfigError(f"'module': unknown module '{bad[0]}'; valid: {', '.join(sorted(REGISTRY))}")
            continue
        nums = values if kind != "choice" else [min(values), max(values)]
        _check_bounds(key, nums[0], nums[-1])


def to_tune(space: dict) -> dict:
    samplers = {"choice": lambda v: tune.choice(v), "uniform": lambda v: tune.uniform(*v),
                "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
    return {key: samplers[next(iter(spec))](next(iter(spec.values()))) for key, spec in space.items()}


def used_params(params: dict) -> dict:
    """The point of the space a trial really uses: a size dimension only for the module it sizes."""
    module = params.get("module", "adaptformer")
    size = size_dimension(module)
    return {k: v for k, v in params.items() if k not in SIZE_DIMENSIONS or k == size}
