"""Typed run configuration: presets (YAML shipped in lift_dist/presets) + overrides.

A preset is `<dataset>` or `<dataset>/<recipe>` (recipe `lift` or `lift_plus`, default `lift`):
the dataset YAML and the recipe YAML are merged (recipe first, dataset wins where the paper sets a
per-dataset value such as iNat's epochs), then command-line overrides `section.key=value` win.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from lift_dist.errors import ConfigError, choices
from lift_dist.model.lift_model import ModelConfig

RECIPES = ("lift", "lift_plus")


@dataclass
class DataConfig:
    shards: str = ""  # directory built by shards/ (holds {split}-*.tar and manifests)
    train_split: str = "train"
    eval_split: str = "test"
    resolution: int | None = None  # None: the model's image size
    interpolation: str = "bilinear"  # LIFT: bilinear; LIFT+: bicubic
    augment: str = "lift"  # lift (RandomResizedCrop + flip) | mda (LIFT+ minimalist) | none
    mda_schedule: str = "convex"
    workers: int = 2  # data-loader processes per rank
    shuffle_buffer: int = 2000
    epoch_mode: str = "exact"  # exact: every sample once per epoch | resampled: shards drawn with replacement
    tte: bool = True
    tte_mode: str = "fivecrop"
    tte_expand: int = 24
    eval_batch_size: int = 64
    # Decode large training JPEGs at a reduced DCT scale (shorter side still >= resolution·8/7).
    # Matters for shards built with --no-resize; resized shards (default 256 px) are left as they are.
    jpeg_draft: bool = True
    # Opt-in: a directory for cached frozen features (head-only or last-k training with augment=none);
    # one sub-directory per config hash, reused by every later run with the same frozen part.
    feature_cache: str | None = None
    cache_dtype: str = "float32"  # float32 | float16 (half the disk for token caches)


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 10
    batch_size: int = 128  # global batch per optimizer step, whatever the world size
    micro_batch_size: int | None = None  # per rank; None: batch_size / world (accumulation 1)
    schedule: str = "cosine_epoch"  # cosine_epoch (paper) | cosine_step | constant
    warmup_steps: int = 0
    loss: str = "la"
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0 or 1


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    compile: str = "auto"  # auto (torch.compile the encoder on GPU) | always | never
    deterministic: bool = False
    resume: str | None = None  # None | latest | path to a checkpoint directory
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    keep_checkpoints: int = 2
    eval_every_epochs: int = 0  # 0: evaluate once at the end
    log_every_steps: int = 10
    profile_phases: bool = False  # time data / forward / backward / all-reduce / optimizer per epoch (history.jsonl)
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs); for tests/benchmarks
    preset: str | None = None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value, tp, where: str):
    """Convert a YAML/CLI value to the field's declared type, with an error naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")) and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        inner = args[0] if args else str
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


def _merge(obj, data: dict, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown setting '{where}{key}'; valid: {choices(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{where}{key}' is a section; give a mapping")
            _merge(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}{key}"))


def available_presets() -> list[str]:
    files = resources.files("lift_dist") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml") and p.name[:-5] not in RECIPES)


def _preset_yaml(name: str) -> dict:
    path = resources.files("lift_dist") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; valid: {', '.join(available_presets())}")
    return yaml.safe_load(path.read_text()) or {}


def load_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    cfg = RunConfig()
    if preset:
        dataset, _, recipe = preset.partition("/")
        recipe = recipe or "lift"
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe '{recipe}' in preset '{preset}'; valid: {', '.join(RECIPES)}")
        _merge(cfg, _preset_yaml(recipe), "")
        ds = _preset_yaml(dataset)
        # A dataset preset may hold per-recipe values (e.g. iNat: 20 epochs for LIFT, 15 for LIFT+).
        per_recipe = ds.pop("recipes", {}) or {}
        _merge(cfg, ds, "")
        _merge(cfg, per_recipe.get(recipe, {}), "")
        cfg.preset = f"{dataset}/{recipe}"
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        _merge(cfg, data, "")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. optim.lr=0.02)")
        node: dict = {}
        cur = node
        parts = key.strip().split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
        _merge(cfg, node, "")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    d, o = cfg.data, cfg.optim
    one_of = {
        "data.augment": (d.augment, ("lift", "mda", "none")),
        "data.epoch_mode": (d.epoch_mode, ("exact", "resampled")),
        "data.tte_mode": (d.tte_mode, ("fivecrop", "tencrop")),
        "data.interpolation": (d.interpolation, ("bilinear", "bicubic")),
        "data.cache_dtype": (d.cache_dtype, ("float32", "float16")),
        "data.mda_schedule": (d.mda_schedule, ("convex", "linear", "concave", "min", "max")),
        "optim.optimizer": (o.optimizer, ("sgd", "adamw")),
        "optim.schedule": (o.schedule, ("cosine_epoch", "cosine_step", "constant")),
        "optim.zero_stage": (o.zero_stage, (0, 1)),
        "device": (cfg.device, ("auto", "cpu", "cuda")),
        "precision": (cfg.precision, ("auto", "bf16", "fp32")),
        "compile": (cfg.compile, ("auto", "always", "never")),
        "model.head": (cfg.model.head, ("cosine", "linear", "l2")),
        "model.head_init": (cfg.model.head_init, ("semantic", "class_mean", "random")),
        "model.prompt": (cfg.model.prompt, ("default", "classname", "ensemble", "descriptions")),
    }
    for key, (value, valid) in one_of.items():
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(map(str, valid))}")
    positive = {"optim.epochs": o.epochs, "optim.batch_size": o.batch_size, "data.eval_batch_size": d.eval_batch_size}
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
    if o.micro_batch_size is not None and o.micro_batch_size < 1:
        raise ConfigError(f"optim.micro_batch_size must be >= 1, got {o.micro_batch_size}")
    if d.workers < 0:
        raise ConfigError(f"data.workers must be >= 0, got {d.workers}")
    if d.feature_cache and d.augment != "none":
        raise ConfigError(f"data.feature_cache needs data.augment=none (got {d.augment!r}): augmented images change every epoch")
    if d.feature_cache and d.epoch_mode != "exact":
        raise ConfigError("data.feature_cache reads every training sample once per epoch; use data.epoch_mode=exact")
    if cfg.model.prompt == "descriptions" and not cfg.model.descriptions:
        raise ConfigError("model.prompt=descriptions needs model.descriptions=<JSON file of sentences per class>")


def save_yaml(cfg: RunConfig, path: Path) -> None:
    data = to_dict(cfg)
    data["optim"]["betas"] = list(data["optim"]["betas"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
