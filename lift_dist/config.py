"""The run configuration: one typed model, validated when it is loaded.

A run is configured by a preset (`<dataset>` or `<dataset>/<recipe>`, YAML shipped in
lift_dist/presets), an optional YAML file and `--set a.b=c` overrides, in that order. Every setting
is typed here, with its choices taken from the registries that implement them (modules, losses,
heads, inits, transforms), so a bad value stops `load_config` with one line naming the key, the value
and what is allowed, before any process group, model or compile step. Between processes the
configuration travels as a resolved YAML file (`save_config` / `load_config(config_file=...)`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, field_validator, model_validator

from lift_dist.errors import ConfigError
from lift_dist.head_init import INIT_ALIASES, INIT_METHODS, PROMPT_ALIASES, PROMPTS
from lift_dist.heads import HEAD_ALIASES, HEADS
from lift_dist.losses import LOSSES
from lift_dist.model import registry as model_registry
from lift_dist.peft import ALIASES as PEFT_ALIASES
from lift_dist.peft import REGISTRY as PEFT_REGISTRY
from lift_dist.peft import check_configs, first_touched_block, make_configs
from lift_dist.peft.base import BottleneckR, LayerSpec
from lift_dist.presets import RECIPES, available_presets, preset_layers
from lift_dist.transform_names import AUGMENTATIONS, INTERPOLATION_NAMES, MDA_SCHEDULES, TTE_MODES
from lift_dist.validation import Strict, validate

SECTIONS = ("model", "data", "optim", "metrics")
GROUP_SOURCES = ("own", "cifar100_ir100")

PeftName = Literal[tuple(PEFT_REGISTRY)]
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]
SplitName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]


def _comma_list(v):
    """`--set model.peft=lora,ssf` and `--peft lora` give a list; the papers' names are accepted too."""
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    return [PEFT_ALIASES.get(m, m) if isinstance(m, str) else m for m in v] if isinstance(v, list) else v


def _alias(table: dict):
    return BeforeValidator(lambda v: table.get(v, v) if isinstance(v, str) else v)


def _peft_keys(v):
    return {PEFT_ALIASES.get(k, k): o for k, o in v.items()} if isinstance(v, dict) else v


def absolute_path(v: str | None) -> str | None:
    """Paths are stored absolute, so a config.yaml works from any directory (predict, sweeps, Slurm);
    URLs stay as they are, file:// becomes the path."""
    if v is not None and v.startswith("file://"):
        v = v[len("file://"):]
    if v is None or v == "" or "://" in v:
        return v
    return str(Path(v).expanduser().absolute())


def _looks_like_path(v: str) -> bool:
    return os.sep in v or v.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.path.exists(v)


class ModelConfig(Strict):
    name: str = "ViT-B-16"  # an open_clip ViT name, or `tiny` (built in, random)
    pretrained: str | None = None  # open_clip tag ('openai') or weights file; None = random init
    peft: Annotated[list[PeftName], BeforeValidator(_comma_list)] = ["adaptformer"]
    # Shared module options (None = each method's default); per-method ones go in peft_options.
    r: BottleneckR | None = None
    alpha: Annotated[float, Field(gt=0, le=1)] | None = None
    layers: LayerSpec | None = None
    peft_options: Annotated[dict[PeftName, dict[str, Any]], BeforeValidator(_peft_keys)] = {}
    # A recipe's per-method options, used only for the methods chosen (peft_options win over them):
    # LIFT+ sizes LoRA with C / (4L), so lift_plus sets {lora: {divisor: 4}} whatever the module.
    peft_defaults: Annotated[dict[PeftName, dict[str, Any]], BeforeValidator(_peft_keys)] = {}
    head: Annotated[Literal[tuple(HEADS)], _alias(HEAD_ALIASES)] = "cosine"
    scale: PositiveFloat = 25.0
    head_init: Annotated[Literal[INIT_METHODS], _alias(INIT_ALIASES)] = "semantic"
    # class_mean / linear_probe features: images per class (0: all; LIFT all, LIFT+ 100) and whether the
    # modules are attached (LIFT+) or the frozen backbone alone gives them (LIFT).
    head_init_images: NonNegative = 100
    head_init_features: Literal["with_modules", "frozen"] = "with_modules"
    prompt: Annotated[Literal[PROMPTS], _alias(PROMPT_ALIASES)] = "default"
    template: str = "a photo of a {}."
    descriptions: str | None = None  # JSON file {class name: [sentences]} for prompt=descriptions

    @field_validator("name")
    @classmethod
    def _known_vit(cls, v: str) -> str:
        if model_registry.vision_geometry(v) is None:
            what = "unknown model" if model_registry.model_config(v) is None else "not a plain open_clip ViT"
            names = [n for n in model_registry.vit_names() if n.startswith("ViT") or n == "tiny"]
            raise ValueError(f"{what}; valid ViT names: {', '.join(names)}")
        return v

    @field_validator("pretrained")
    @classmethod
    def _absolute_weights(cls, v: str | None) -> str | None:
        return absolute_path(v) if v and _looks_like_path(v) else v

    @field_validator("descriptions")
    @classmethod
    def _absolute_descriptions(cls, v):
        return absolute_path(v)

    @field_validator("template")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if "{}" not in v:
            raise ValueError("the prompt template needs a '{}' where the class name goes")
        try:  # formatted as head_init does, so that a stray brace is named here, not after the model build
            v.format("class name")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"the prompt template needs exactly one '{{}}', for the class name, and no other "
                             f"braces (write a literal brace as '{{{{' or '}}}}'); {type(e).__name__}: {e}") from None
        return v

    @model_validator(mode="after")
    def _modules_fit_the_model(self):
        configs = make_configs(self.peft, self.peft_options, self.peft_defaults, r=self.r, alpha=self.alpha,
                               layers=self.layers)
        check_configs(configs, model_registry.vision_geometry(self.name).layers)
        if self.prompt == "descriptions" and not self.descriptions:
            raise ConfigError("model.prompt=descriptions needs model.descriptions=<JSON file of sentences per class>")
        return self

    def peft_configs(self):
        return make_configs(self.peft, self.peft_options, self.peft_defaults, r=self.r, alpha=self.alpha, layers=self.layers)


class DataConfig(Strict):
    # The shard set: a directory built by `lift-dist shards`, or a URL prefix holding the same files
    # (http(s)://host/path/, file://, or s3:// gs:// ... read through shard_pipe).
    shards: str = ""
    shard_pipe: str | None = None  # command that writes {url} to stdout, e.g. "aws s3 cp {url} -" (webdataset's pipe:)
    shard_retries: NonNegative = 3  # re-reads of a remote shard or manifest that broke off, with back-off
    shard_cache: str | None = None  # keep downloaded remote shards in this directory (read once, then locally)
    train_split: SplitName = "train"
    eval_split: SplitName = "test"
    resolution: Positive | None = None  # None: the model's image size
    interpolation: Literal[INTERPOLATION_NAMES] = "bilinear"  # LIFT: bilinear; LIFT+: bicubic
    augment: Literal[AUGMENTATIONS] = "lift"  # lift (RandomResizedCrop + flip) | mda (LIFT+) | none
    mda_schedule: Literal[MDA_SCHEDULES] = "convex"
    workers: NonNegative = 2  # data-loader processes per rank
    shuffle_buffer: NonNegative = 2000
    epoch_mode: Literal["exact", "resampled"] = "exact"  # resampled: shards drawn with replacement
    tte: bool = True
    tte_mode: Literal[TTE_MODES] = "fivecrop"
    tte_expand: NonNegative = 24
    tte_views: Positive = 1  # randaug: random views per image (LIFT's randaug_times)
    eval_batch_size: Positive = 64
    # Decode large training JPEGs at a reduced DCT scale (shorter side still >= resolution·8/7).
    # Matters for shards built with --no-resize; resized shards (default 256 px) are left as they are.
    jpeg_draft: bool = True
    # Where training JPEGs are decoded, cropped and resized: in the loader workers (cpu), or batched
    # on the training GPU (cuda: nvJPEG; the workers only read shards and draw the augmentation).
    decode_device: Literal["cpu", "cuda"] = "cpu"
    # Opt-in: a directory for cached frozen features (head-only or last-k training with augment=none);
    # one sub-directory per config hash, reused by every later run with the same frozen part.
    feature_cache: str | None = None
    cache_dtype: Literal["float32", "float16"] = "float32"

    @field_validator("shards", "feature_cache", "shard_cache")
    @classmethod
    def _absolute(cls, v):
        return absolute_path(v)

    @field_validator("shard_pipe")
    @classmethod
    def _has_url(cls, v):
        if v is not None and "{url}" not in v:
            raise ValueError("the command needs a '{url}' where the shard's URL goes, e.g. 'aws s3 cp {url} -'")
        return v

    @model_validator(mode="after")
    def _cache_needs_fixed_inputs(self):
        if self.feature_cache and self.augment != "none":
            raise ConfigError(f"data.feature_cache needs data.augment=none (got {self.augment!r}): augmented images "
                              "change every epoch")
        if self.feature_cache and self.epoch_mode != "exact":
            raise ConfigError("data.feature_cache reads every training sample once per epoch; use data.epoch_mode=exact")
        return self


class OptimConfig(Strict):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.01
    momentum: Beta = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    epochs: Positive = 10
    batch_size: Positive = 128  # global batch per optimizer step, whatever the world size
    micro_batch_size: Positive | None = None  # per rank; None: batch_size / world (accumulation 1)
    schedule: Literal["cosine_epoch", "cosine_step", "constant"] = "cosine_epoch"  # cosine_epoch: the papers'
    warmup_steps: NonNegative = 0
    loss: Literal[tuple(LOSSES)] = "la"
    zero_stage: Literal[0, 1] = 0  # DeepSpeed ZeRO stage


class MetricsConfig(Strict):
    # Which training counts define head (> 100) / medium / tail (< 20): "own" (the training split's,
    # LIFT+), "cifar100_ir100" (LIFT reports CIFAR-100-LT IR50 / IR10 by the IR100 counts), or a shard
    # directory whose train split's counts define them.
    groups_from: str = "own"

    @field_validator("groups_from")
    @classmethod
    def _known(cls, v: str) -> str:
        if v in GROUP_SOURCES:
            return v
        if not _looks_like_path(v):
            raise ValueError(f"use {', '.join(GROUP_SOURCES)} or a shard directory")
        return absolute_path(v)


def no_frozen_part(peft: list[str]) -> str:
    return (f"data.feature_cache: the modules {list(peft)} change block 0 or the embedding, so no frozen part is left "
            "to cache; use it with head-only (none), or with modules restricted to later blocks (e.g. partial or "
            "adaptformer with model.layers=last:k)")


class RunConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    metrics: MetricsConfig = MetricsConfig()
    out: str = "runs/run"
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on GPU, fp32 on CPU. fp16: the official codes' AMP (fp16 autocast + a gradient
    # scaler; evaluation: eval_precision), for GPUs without bf16 or to match their numbers; bf16 needs no scaler.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # auto: bf16 autocast for bf16 runs, fp32 for the others (as LIFT tests). fp16: every weight and activation
    # in fp16, as LIFT+ tests (its prec_test="fp16", model.half()); fast on GPUs, several times slower on CPUs.
    eval_precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: Literal["auto", "always", "never"] = "auto"  # auto: torch.compile the encoder on GPU
    deterministic: bool = False
    resume: str | None = None  # None | latest | path to a checkpoint directory
    checkpoint_every_steps: NonNegative = 0  # 0: only at epoch ends
    keep_checkpoints: NonNegative = 2  # 0: keep every checkpoint
    eval_every_epochs: NonNegative = 0  # 0: evaluate once at the end
    log_every_steps: Positive = 10
    profile_phases: bool = False  # time data / forward / backward / all-reduce / optimizer per epoch
    max_steps: NonNegative = 0  # stop after this many optimizer steps (0: run all epochs); tests, benchmarks
    wandb_project: str | None = None  # also log to Weights & Biases (needs `pip install wandb`)
    preset: str | None = None

    @field_validator("out")
    @classmethod
    def _absolute(cls, v):
        if not v.strip():  # "" would make the current directory the run directory
            raise ValueError("give a run directory (an empty path means the current directory)")
        return absolute_path(v)

    @model_validator(mode="after")
    def _fp16_needs_zero0(self):
        if self.precision == "fp16" and self.optim.zero_stage != 0:
            raise ConfigError("precision=fp16 scales the loss with DeepSpeed's gradient scaler, which runs with "
                              "optim.zero_stage=0 only; use precision=bf16 with ZeRO 1")
        return self

    @model_validator(mode="after")
    def _feature_cache_has_a_frozen_part(self):
        m = self.model
        if self.data.feature_cache and first_touched_block(m.peft_configs(), model_registry.vision_geometry(m.name).layers) == 0:
            raise ConfigError(no_frozen_part(m.peft))
        return self

    @model_validator(mode="after")
    def _resolution_fits_the_model(self):
        res = self.data.resolution
        geo = model_registry.vision_geometry(self.model.name)
        if res is not None and res // geo.patch_size != geo.grid:
            lo, hi = geo.grid * geo.patch_size, (geo.grid + 1) * geo.patch_size - 1
            raise ConfigError(f"data.resolution={res} does not fit {self.model.name}: its positional embeddings are for "
                              f"a {geo.grid}×{geo.grid} grid of {geo.patch_size} px patches; use {geo.image_size} "
                              f"(any of {lo}..{hi}) or leave it unset")
        return self


# ---- loading --------------------------------------------------------------------------------------

class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()  # of the mapping's own keys: those merged in by `<<: *anchor` may be overridden, as in safe_load
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # a list or mapping as a key
                raise yaml.constructor.ConstructorError(None, None, "found an unhashable key", key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """YAML data (no Python tags) with duplicate keys refused."""
    # Data only: a SafeLoader subclass builds plain scalars, lists and dicts, and refuses every Python tag.
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506


def _merge_file(dst: dict, src: dict, where: str) -> None:
    """A YAML layer: sections merge key by key, every other value replaces what was there."""
    if not isinstance(src, dict):
        raise ConfigError(f"{where} must hold a mapping of settings, got {type(src).__name__}")
    for key, value in src.items():
        if key in SECTIONS and value is None:
            continue  # `optim:` with nothing under it
        if key in SECTIONS and not isinstance(value, dict):  # else a flag such as --lr would rebuild it silently
            raise ConfigError(f"{where}: {key}={value!r} is not valid: a section is a mapping of settings (e.g. {key}: {{...}})")
        if key in SECTIONS and isinstance(dst.get(key), dict):
            dst[key].update(value)
        else:
            dst[key] = value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} " + ("is a directory; give a YAML file" if path.is_dir() else "does not exist"))
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    return data or {}


def _apply_override(data: dict, item: str) -> None:
    """`a.b.c=value`: the value (YAML) goes exactly at that path, creating mappings on the way."""
    key, sep, text = item.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not sep or not all(parts):
        raise ConfigError(f"override '{item}' must look like section.key=value (e.g. optim.lr=0.02)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: the value is not valid YAML ({' '.join(str(e).split())})") from None
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def load_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    data: dict = {s: {} for s in SECTIONS}
    if preset:
        for where, layer in preset_layers(preset):
            _merge_file(data, layer, where)
        data["preset"] = preset if "/" in preset else f"{preset}/lift"
    if config_file:
        _merge_file(data, _read_yaml(Path(config_file)), str(config_file))
    for item in overrides or []:
        _apply_override(data, item)
    return validate(RunConfig, data)


def to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


def config_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(config_yaml(cfg))
    os.replace(tmp, path)


__all__ = ["RECIPES", "DataConfig", "MetricsConfig", "ModelConfig", "OptimConfig", "RunConfig", "available_presets", "config_yaml",
           "load_config", "save_config", "to_dict"]
