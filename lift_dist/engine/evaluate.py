"""Distributed evaluation: each rank reads its share of the eval shards; per-class counts are summed."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from lift_dist.data.manifest import Manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, make_loader, rebatch
from lift_dist.engine import checkpoint
from lift_dist.engine.collectives import all_reduce_sum_
from lift_dist.errors import DataError
from lift_dist.metrics import MetricAccumulator
from lift_dist.model.lift_model import build_model
from lift_dist.run_dir import RunDir
from lift_dist.transforms import average_crop_logits, eval_transform, tte_transform


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    manifest: Manifest,
    train_counts,
    *,
    resolution: int,
    interpolation: str,
    tte: bool,
    tte_mode: str = "fivecrop",
    tte_expand: int = 24,
    batch_size: int = 64,
    workers: int = 1,
    rank: int = 0,
    world: int = 1,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
) -> dict:
    """Return metrics (overall, mean_class, head, medium, tail, per_class ...) over the whole split."""
    num_classes = len(train_counts)
    transform = (
        tte_transform(resolution, mode=tte_mode, expand=tte_expand, interpolation=interpolation)
        if tte
        else eval_transform(resolution, interpolation=interpolation)
    )
    plan = ShardPlan(len(manifest.shard_files), manifest.shard_samples, seed=0, world=world)
    workers = max(0, min(workers, len(plan.rank_shards(0, rank, shuffle=False))))
    stream = ShardStream(manifest, plan, rank, FixedEpoch(), transform, train=False, num_classes=num_classes)
    loader = make_loader(stream, workers)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_classes)
    confusions: dict[tuple[int, int], int] = {}  # (true, predicted) -> count, mistakes only (sparse)
    for images, labels, _ in rebatch(iter(loader), batch_size):
        images = images.to(device, non_blocking=True)
        with autocast_context(device, precision):
            logits = average_crop_logits(model, images) if tte else model(images)
        preds = logits.float().argmax(dim=1).cpu()
        acc.update(preds, labels)
        wrong = preds != labels
        for t, p in zip(labels[wrong].tolist(), preds[wrong].tolist()):
            confusions[(t, p)] = confusions.get((t, p), 0) + 1
    del loader
    model.train(was_training)
    for t in (acc.correct, acc.total):
        all_reduce_sum_(t, device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, confusions)
        confusions = {}
        for part in gathered:
            for k, v in part.items():
                confusions[k] = confusions.get(k, 0) + v
    out = acc.compute(train_counts)
    out["confusions"] = confusions
    return out


def load_run(run_dir, checkpoint_dir=None, num_classes: int | None = None):
    """Rebuild a trained model from RUN/config.yaml (base open_clip weights by name) and its
    trainable-only checkpoint. Returns (model, config)."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    path = checkpoint.weights_path(run, checkpoint_dir)
    state = checkpoint.load_trainable(path)
    head = state.get("head.weight")
    C = num_classes or (head.shape[0] if head is not None else None)
    if C is None:
        raise DataError(f"{path}: no head.weight in the checkpoint")
    if head is not None and head.shape[0] != C:
        raise DataError(f"checkpoint {path} has a head for {head.shape[0]} classes but run {run.path} has {C} classes")
    cfg.model.head_init = "random"
    model, clip = build_model(cfg.model, C)
    del clip
    model.load_trainable_state_dict(state, source=str(path))
    model.eval()
    return model, cfg
