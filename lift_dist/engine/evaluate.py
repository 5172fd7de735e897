"""Distributed evaluation: each rank reads its share of the eval shards; per-class counts are summed."""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from lift_dist.data.manifest import Manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, loader_batches, make_loader
from lift_dist.engine import checkpoint
from lift_dist.engine.collectives import all_reduce_sum_
from lift_dist.errors import DataError
from lift_dist.metrics import MetricAccumulator
from lift_dist.model.lift_model import build_model
from lift_dist.run_dir import RunDir
from lift_dist.transforms import average_crop_logits, eval_transform, tte_transform


def precisions(cfg, device: torch.device) -> tuple[str, str]:
    """A run's (training, evaluation) precision on `device`. precision=auto: bf16 autocast on GPU, fp32 on
    CPU. eval_precision=auto: bf16 for bf16 runs, fp32 for fp32 and fp16 (AMP) runs, as LIFT tests its AMP runs."""
    train = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return train, cfg.eval_precision if cfg.eval_precision != "auto" else ("bf16" if train == "bf16" else "fp32")


def logits_in(model: torch.nn.Module, precision: str):
    """`model`'s logits in an evaluation precision, as a function of the batch: fp32; bf16 under autocast;
    fp16 with every floating-point parameter and buffer in fp16, as LIFT+ tests (`model.half()`).

    The fp16 tensors are copies, made once, and the model runs on them through functional_call: the
    training Parameters, their gradient hooks and the optimizer's references are never touched (a cast
    there and back would round fp32 weights). Our heads compute in fp32 even then; their logits are rounded
    to fp16, as LIFT+'s fp16 head gives them, so that its ties are ours."""
    if precision == "fp16":
        half = {n: t.detach().half() if t.is_floating_point() else t
                for n, t in itertools.chain(model.named_parameters(), model.named_buffers())}
        return lambda x: torch.func.functional_call(model, half, (x.half(),)).half()
    if precision == "bf16":
        def bf16(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return model(x)
        return bf16
    return model


def transform_for(d, resolution: int, tte: bool):
    """The evaluation transform of data settings `d`: test-time ensembling or resize + centre crop."""
    if tte:
        return tte_transform(resolution, mode=d.tte_mode, expand=d.tte_expand, interpolation=d.interpolation, views=d.tte_views)
    return eval_transform(resolution, interpolation=d.interpolation)


@torch.no_grad()
def evaluate(model: torch.nn.Module, manifest: Manifest, group_counts, d, *, resolution: int, tte: bool, rank: int = 0,
             world: int = 1, device: torch.device | None = None, precision: str = "fp32", workers: int | None = None) -> dict:
    """Metrics (overall, mean_class, head, medium, tail, per_class, confusions ...) over the whole split;
    `group_counts` (training counts) define head / medium / tail; `d` is the run's DataConfig."""
    device = device or torch.device("cpu")
    num_classes = len(group_counts)
    plan = ShardPlan(len(manifest.shard_files), manifest.shard_samples, seed=0, world=world)
    workers = max(0, min(min(d.workers, 2) if workers is None else workers, len(plan.rank_shards(0, rank, shuffle=False))))
    random_views = tte and d.tte_mode == "randaug"  # seeded per sample, like training: the same views every time
    stream = ShardStream(manifest, plan, rank, FixedEpoch(), transform_for(d, resolution, tte), train=False,
                         num_classes=num_classes, reseed=random_views, retries=d.shard_retries if manifest.remote else 0,
                         cache_dir=d.shard_cache)
    loader = make_loader(stream, workers)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_classes)
    confusions: dict[tuple[int, int], int] = {}  # (true, predicted) -> count, mistakes only (sparse)
    logits_of = logits_in(model, precision)
    for images, labels, _ in loader_batches(loader, d.eval_batch_size):
        x = images.to(device, non_blocking=True)
        logits = average_crop_logits(logits_of, x) if tte else logits_of(x)
        preds = (logits.half() if precision == "fp16" else logits).float().argmax(dim=1).cpu()  # fp16: LIFT+'s fp16 crop mean
        acc.update(preds, labels)
        wrong = preds != labels
        for t, p in zip(labels[wrong].tolist(), preds[wrong].tolist()):
            confusions[(t, p)] = confusions.get((t, p), 0) + 1
    del loader
    model.train(was_training)
    for t in (acc.correct, acc.total):
        all_reduce_sum_(t, device)
    out = acc.compute(group_counts)
    out["confusions"] = _gather_confusions(confusions)
    return out


def _gather_confusions(confusions: dict) -> dict:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return confusions
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, confusions)
    total: dict = {}
    for part in gathered:
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total


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
