"""Lightweight fine-tuning methods, one file each, registered by name.

    from lift_dist.peft import make_configs, apply_peft
    configs = make_configs(["adaptformer"], r=64)
    info = apply_peft(vit, configs, num_classes=1000)
"""

from __future__ import annotations

from pydantic import ValidationError

from lift_dist.errors import ConfigError, choices
from lift_dist.peft.adapter import Adapter
from lift_dist.peft.adaptformer import AdaptFormer
from lift_dist.peft.base import PeftConfig, PeftMethod, select_layers
from lift_dist.peft.bitfit import BitFit
from lift_dist.peft.full import Full, HeadOnly, Partial
from lift_dist.peft.layernorm import LayerNormTuning
from lift_dist.peft.lora import Lora
from lift_dist.peft.sparse import Sparse
from lift_dist.peft.ssf import Ssf
from lift_dist.peft.vpt import VptDeep, VptShallow
from lift_dist.validation import config_error

REGISTRY: dict[str, type[PeftMethod]] = {
    m.name: m
    for m in (AdaptFormer, Adapter, Lora, VptShallow, VptDeep, BitFit, LayerNormTuning, Ssf, Sparse, Partial, Full, HeadOnly)
}
DEFAULT = "adaptformer"
# The names the papers and the official codes' flags use (LIFT: bias_tuning, ln_tuning, mask, full_tuning,
# vpt_shallow / vpt_deep; LIFT+: bitfit, pt, aft, fft), accepted for the registry names.
ALIASES = {"layernorm": "ln", "ln_tuning": "ln", "bias": "bitfit", "bias_tuning": "bitfit", "mask": "sparse", "aft": "sparse",
           "full_tuning": "full", "fft": "full", "vpt_shallow": "vpt-shallow", "vpt_deep": "vpt-deep", "pt": "vpt-deep",
           "lp": "none", "classifier": "none"}


def method_class(name: str) -> type[PeftMethod]:
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ConfigError(f"unknown lightweight module '{name}'; valid: {choices(REGISTRY)}")
    return REGISTRY[name]


def make_configs(names: list[str] | str, options: dict[str, dict] | None = None, defaults: dict[str, dict] | None = None,
                 **shared) -> list[tuple[str, PeftConfig]]:
    """Build one config per method. `shared` (e.g. r=64, alpha=0.01, layers='last:6', length=20) goes to
    every method whose config has that field, and must fit at least one of them; `options[name]` is
    per-method and wins. `defaults[name]` (a recipe's, e.g. LIFT+'s {lora: {divisor: 4}}) applies only
    if that method is chosen, under shared and options."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        names = ["none"]
    if len(set(names)) != len(names):
        raise ConfigError(f"a module is listed twice in {names}")
    if "none" in names and len(names) > 1:
        raise ConfigError("'none' (head only) cannot be combined with other modules")
    options, defaults = options or {}, defaults or {}
    unknown = [k for k in options if k not in names]
    if unknown:
        raise ConfigError(f"options given for '{unknown[0]}', which is not among the chosen modules {names}")
    for name in defaults:  # a misspelt method would otherwise never apply
        method_class(name)
    shared = {k: v for k, v in shared.items() if v is not None}
    used: set[str] = set()
    out = []
    for name in names:
        cls = method_class(name)
        fields = set(cls.config_class.model_fields)
        kwargs = {k: v for k, v in shared.items() if k in fields}
        used |= set(kwargs)
        for extra in (defaults.get(name, {}), options.get(name, {})):
            bad = [k for k in extra if k not in fields]
            if bad:
                raise ConfigError(f"{name} has no option '{bad[0]}'; its options: {choices(fields) or '(none)'}")
        # Where each value came from, so that an error names the key the user wrote.
        origin = {k: f"model.peft_defaults.{name}.{k}" for k in defaults.get(name, {})}
        origin |= {k: f"model.{k}" for k in kwargs} | {k: f"model.peft_options.{name}.{k}" for k in options.get(name, {})}
        kwargs = {**defaults.get(name, {}), **kwargs, **options.get(name, {})}
        try:
            out.append((name, cls.config_class(**kwargs)))
        except ValidationError as e:
            field = str(e.errors()[0]["loc"][0])
            raise config_error(e, origin.get(field, f"model.peft_options.{name}").rsplit(".", 1)[0]) from None
    ignored = [k for k in shared if k not in used]
    if ignored:
        raise ConfigError(f"option '{ignored[0]}' does not apply to {', '.join(names)}")
    return out


def check_configs(configs: list[tuple[str, PeftConfig]], num_layers: int) -> None:
    """What can be checked of the chosen methods from the model's depth alone (config time)."""
    for name, cfg in configs:
        method_class(name).check(cfg, num_layers)


def first_touched_block(configs: list[tuple[str, PeftConfig]], num_layers: int) -> int:
    """The first block any chosen method changes or trains (num_layers if none does): the encoder up to
    it is a fixed function of the image. `PeftViT.frozen_prefix` says the same of a built model."""
    return min((b for name, cfg in configs for b in method_class(name).touched_blocks(cfg, num_layers)), default=num_layers)


def apply_peft(vit, configs: list[tuple[str, PeftConfig]], num_classes: int) -> dict[str, dict]:
    """Attach every method to the (already frozen) encoder; return per-method facts."""
    info = {name: method_class(name)(cfg).apply(vit, num_classes) for name, cfg in configs}
    # Sparse fine-tuning rebuilds a block's linear weights from detached frozen entries, so a tensor that
    # another method (full, partial, bitfit) made trainable there would silently get no gradient.
    for blk in vit.blocks:
        clash = [n for n in blk.weights if any(t.requires_grad for t in blk.frozen_linear(n))]
        if clash:
            others = [n for n in info if n != "sparse"]
            raise ConfigError(f"sparse cannot share block {blk.index} with {', '.join(others)}: both would train its "
                              f"'{clash[0]}' weights; give them disjoint blocks with model.peft_options (e.g. "
                              "{partial: {layers: 'last:2'}, sparse: {layers: '0,1'}}) or drop one")
    return info


__all__ = ["ALIASES", "REGISTRY", "DEFAULT", "PeftConfig", "PeftMethod", "make_configs", "check_configs", "first_touched_block",
           "apply_peft", "method_class", "select_layers"]
