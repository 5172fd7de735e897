"""Presets: `<dataset>` or `<dataset>/<recipe>`. A recipe (lift, lift_plus) holds the method's settings
as the paper ran them; a dataset preset holds its splits and any per-recipe values (iNat's epochs).
Layers apply recipe first, then the dataset, then the dataset's values for that recipe."""

from __future__ import annotations

from importlib import resources

import yaml

from lift_dist.errors import ConfigError

RECIPES = ("lift", "lift_plus")
DEFAULT_RECIPE = "lift"


def _files():
    return resources.files("lift_dist") / "presets"


def available_presets() -> list[str]:
    return sorted(p.name[:-5] for p in _files().iterdir() if p.name.endswith(".yaml") and p.name[:-5] not in RECIPES)


def _read(name: str) -> dict:
    path = _files() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; valid: {', '.join(available_presets())} (each optionally "
                          f"/{' or /'.join(RECIPES)})")
    return yaml.safe_load(path.read_text()) or {}


def recipe_layer(recipe: str) -> dict:
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{recipe}'; valid: {', '.join(RECIPES)}")
    return _read(recipe)


def preset_layers(preset: str) -> list[tuple[str, dict]]:
    """The YAML layers of a preset, in the order they apply, each with where it came from."""
    dataset, _, recipe = preset.partition("/")
    recipe = recipe or DEFAULT_RECIPE
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{recipe}' in preset '{preset}'; valid: {', '.join(RECIPES)}")
    ds = _read(dataset)
    per_recipe = ds.pop("recipes", {}) or {}
    return [(f"preset {recipe}", _read(recipe)), (f"preset {dataset}", ds),
            (f"preset {dataset} ({recipe})", per_recipe.get(recipe, {}))]
