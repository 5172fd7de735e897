"""Everything that can be checked before anything starts: data, sizes, files, the run directory.

`preflight` runs on every rank before the process group, the model or DeepSpeed exist and before
anything is written; each problem is one line naming the culprit (setting, shard, file, directory).
What it finds out (manifests, batch layout, the checkpoint to resume from) is kept in a `Plan` that
the trainer then builds from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lift_dist.config import RunConfig
from lift_dist.data.manifest import Manifest, read_manifest
from lift_dist.engine import checkpoint
from lift_dist.engine.launcher_env import detect
from lift_dist.errors import ConfigError, DataError, RunDirError
from lift_dist.head_init import description_groups
from lift_dist.losses import build_loss
from lift_dist.metrics import cifar100_lt_counts
from lift_dist.run_dir import RunDir, launch_id


@dataclass
class Plan:
    cfg: RunConfig
    run: RunDir
    rank: int
    world: int
    train: Manifest
    eval: Manifest
    micro: int
    accum: int
    signature: dict
    resume: checkpoint.Checkpoint | None = None
    group_counts: np.ndarray | None = None  # the training counts that define head / medium / tail
    launch: str = ""
    notes: list[str] = field(default_factory=list)  # logged once the run directory is set up


def batch_layout(cfg: RunConfig, world: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps) for the global batch, or a clear error."""
    b = cfg.optim.batch_size
    micro = cfg.optim.micro_batch_size or max(1, b // world)
    if b % (micro * world):
        raise ConfigError(
            f"global batch optim.batch_size={b} is not divisible by world size {world} × micro-batch "
            f"{micro} = {micro * world}; choose optim.batch_size or optim.micro_batch_size so that it is")
    return micro, b // (micro * world)


def check_shard_count(manifest: Manifest, world: int, workers: int, what: str) -> None:
    n = len(manifest.shard_files)
    if n < world * max(1, workers):
        raise DataError(
            f"{what}: {manifest.root} has {n} '{manifest.split}' shard(s) but {world} rank(s) × "
            f"{max(1, workers)} data worker(s) need at least {world * max(1, workers)}: every worker "
            f"must read at least one shard. Use fewer workers (data.workers) or rebuild the shards "
            f"smaller (lift-dist shards ... --shard-size)."
        )


def read_data(cfg: RunConfig, world: int) -> tuple[Manifest, Manifest]:
    d = cfg.data
    if not d.shards:
        raise ConfigError("no shard directory given: set data.shards (or --shards DIR)")
    train, evals = (read_manifest(d.shards, split, d.shard_pipe, d.shard_retries) for split in (d.train_split, d.eval_split))
    train.check_sizes()
    evals.check_sizes()
    if evals.class_names != train.class_names:
        diff = next((i for i, (a, b) in enumerate(zip(evals.class_names, train.class_names)) if a != b),
                    min(evals.num_classes, train.num_classes))
        raise DataError(f"the '{evals.split}' split of {d.shards} has other classes than '{train.split}' ({evals.num_classes} vs "
                        f"{train.num_classes}, first difference at label {diff}); build it with --train-manifest")
    workers = 0 if d.feature_cache else d.workers
    check_shard_count(train, world, workers, "training")
    return train, evals


def check_batch(cfg: RunConfig, train: Manifest, world: int, notes: list[str]) -> tuple[int, int]:
    micro, accum = batch_layout(cfg, world)
    if cfg.optim.batch_size > train.num_samples:  # full-batch steps: allowed (a probe may want them), but said
        notes.append(f"note: optim.batch_size={cfg.optim.batch_size} is larger than the {train.num_samples} samples of "
                     f"'{train.split}': every epoch is a single step over all of them")
    return micro, accum


def check_decode_device(cfg: RunConfig, notes: list[str]) -> None:
    d = cfg.data
    if d.decode_device != "cuda":
        return
    if cfg.device == "cpu" or not torch.cuda.is_available():
        raise ConfigError(f"data.decode_device=cuda decodes JPEGs on the training GPU, but device={cfg.device}"
                          + ("" if cfg.device == "cpu" else " and no CUDA GPU is visible") + "; use data.decode_device=cpu")
    if d.feature_cache:
        notes.append("data.decode_device=cuda has no effect with data.feature_cache (features are read, not images)")


def check_files(cfg: RunConfig, train: Manifest) -> None:
    m = cfg.model
    if m.pretrained:
        from lift_dist.model.backbone import check_weights  # noqa: PLC0415  (open_clip: only when weights are named)

        check_weights(m.name, m.pretrained)
    if m.head_init == "semantic" and m.prompt == "descriptions":
        path = Path(m.descriptions)
        if not path.is_file():
            raise ConfigError(f"model.descriptions: file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"model.descriptions: {path} is not readable JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"model.descriptions: {path} must map class names to lists of sentences")
        try:
            description_groups(train.class_names, data)
        except DataError as e:
            raise DataError(f"model.descriptions: {path}: {e}") from None
    if cfg.data.feature_cache and Path(cfg.data.feature_cache).exists() and not Path(cfg.data.feature_cache).is_dir():
        raise ConfigError(f"data.feature_cache={cfg.data.feature_cache} exists and is not a directory")
    build_loss(cfg.optim.loss, train.train_counts, scale=cfg.model.scale)  # e.g. LA needs every class present
    check_wandb(cfg.wandb_project)
    if m.head_init == "linear_probe" and importlib.util.find_spec("sklearn") is None:
        raise ConfigError("model.head_init=linear_probe fits scikit-learn's LogisticRegression: pip install scikit-learn "
                          "(or lift-dist[linear-probe])")
    if m.head_init in ("class_mean", "linear_probe") and (train.train_counts == 0).any():
        empty = [train.class_names[i] for i in (train.train_counts == 0).nonzero()[0][:5]]
        raise DataError(f"model.head_init={m.head_init} needs a training image of every class; none for {', '.join(empty)}")


def group_counts(cfg: RunConfig, train: Manifest) -> np.ndarray:
    """metrics.groups_from: the split's own counts, CIFAR-100-LT IR100's (LIFT on IR50 / IR10), or another
    shard set's training counts (same classes)."""
    source = cfg.metrics.groups_from
    if source == "own":
        return train.train_counts
    if source == "cifar100_ir100":
        if train.num_classes != 100:
            raise ConfigError(f"metrics.groups_from=cifar100_ir100 needs the 100 CIFAR-100 classes, the shards have "
                              f"{train.num_classes}")
        return np.asarray(cifar100_lt_counts(100), dtype=np.int64)
    other = read_manifest(source, "train")
    if other.class_names != train.class_names:
        raise ConfigError(f"metrics.groups_from={source}: its classes differ from the training shards'")
    return other.train_counts


MODEL_LAYOUT = ("name", "peft", "r", "alpha", "layers", "peft_options", "peft_defaults", "head")


def run_signature(cfg: RunConfig, train: Manifest, world: int, micro: int, accum: int) -> dict:
    """What fixes the data and the step layout: a resume under other values would skip or repeat samples."""
    d = cfg.data
    return {
        "world_size": world, "micro_batch": micro, "accumulation": accum, "batch_size": cfg.optim.batch_size,
        "epochs": cfg.optim.epochs, "seed": cfg.seed, "workers": 0 if d.feature_cache else d.workers,
        "shuffle_buffer": d.shuffle_buffer, "epoch_mode": d.epoch_mode, "feature_cache": bool(d.feature_cache),
        "train_shards": hashlib.sha256("".join(train.shard_sha256).encode()).hexdigest()[:16],
        "num_classes": train.num_classes,
        "class_names": hashlib.sha256("\n".join(train.class_names).encode()).hexdigest()[:16],
        "zero_stage": cfg.optim.zero_stage,
        # What decides the trained tensors: a resume under other values could not load them.
        "model": {k: v for k, v in cfg.model.model_dump(mode="json").items() if k in MODEL_LAYOUT},
    }


def check_run_dir(cfg: RunConfig, run: RunDir, signature: dict, launch: str, notes: list[str]):
    """The lock, and either the checkpoint to resume from or proof that a fresh start loses nothing."""
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--out {run.path} exists and is not a directory")
    run.lock(launch).check()
    if cfg.resume:
        ckpt = checkpoint.resolve(run, cfg.resume, log=notes.append)
        if ckpt is None:
            notes.append(f"resume=latest: no checkpoint in {run.checkpoints} yet, starting fresh")
        else:
            checkpoint.check_resumable(ckpt, signature)
        return ckpt
    existing = checkpoint.candidates(run)
    if existing:
        raise RunDirError(f"{run.path} already holds checkpoints of a run (e.g. {existing[0].name}): continue it with "
                          "--resume latest, or start a new run with another --out")
    return None


def check_wandb(project: str | None) -> None:
    if project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"wandb_project={project!r} needs the wandb package: pip install wandb (or leave it unset)")


def preflight(cfg: RunConfig) -> Plan:
    rank, world, _, _ = detect()
    train, evals = read_data(cfg, world)
    notes: list[str] = []
    micro, accum = check_batch(cfg, train, world, notes)
    check_decode_device(cfg, notes)
    check_files(cfg, train)
    signature = run_signature(cfg, train, world, micro, accum)
    launch = launch_id()
    run = RunDir(cfg.out)
    counts = group_counts(cfg, train)
    ckpt = check_run_dir(cfg, run, signature, launch, notes)
    return Plan(cfg, run, rank, world, train, evals, micro, accum, signature, ckpt, counts, launch, notes)


__all__ = ["Plan", "batch_layout", "preflight", "run_signature"]
