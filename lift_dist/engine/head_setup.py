"""The classifier head's initial weights in a distributed run (LIFT §4.1, LIFT+ §5.2).

semantic: text features of the class prompts, computed once on rank 0 and broadcast; class_mean: the
mean feature per class, summed over ranks; linear_probe: a logistic regression on the features, fitted
on rank 0; random: the head's own init, identical on every rank (fixed seed). The features of
class_mean and linear_probe come from every training image and the frozen backbone (LIFT), or from at
most 100 images per class with the modules attached (LIFT+): model.head_init_images / _features.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist

from lift_dist.data.manifest import Manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, loader_batches, make_loader
from lift_dist.engine.collectives import all_reduce_sum_, broadcast_
from lift_dist.engine.distributed import DistInfo
from lift_dist.errors import DataError
from lift_dist.head_init import linear_probe_weights, semantic_weights
from lift_dist.model.backbone import get_tokenizer
from lift_dist.transforms import plain_transform


def init_head(model, clip, cfg, info: DistInfo, train: Manifest, resolution: int) -> None:
    if cfg.model.head_init == "semantic":
        _semantic(model, clip, cfg.model, info, train.class_names)
    elif cfg.model.head_init == "class_mean":
        _class_mean(model, cfg, info, train, resolution)
    elif cfg.model.head_init == "linear_probe":
        _linear_probe(model, cfg, info, train, resolution)


def _semantic(model, clip, mcfg, info: DistInfo, class_names: list[str]) -> None:
    w = torch.zeros_like(model.head.weight, device="cpu")
    if info.is_main:
        descriptions = json.loads(Path(mcfg.descriptions).read_text()) if mcfg.prompt == "descriptions" else None
        w = semantic_weights(clip, get_tokenizer(mcfg.name), class_names, prompt=mcfg.prompt, template=mcfg.template,
                             descriptions=descriptions).float()
    broadcast_(w, info.device)
    model.head.set_weight(w)


def _features(model, cfg, info: DistInfo, train: Manifest, resolution: int, on_batch) -> None:
    """Features of this rank's share of the training images (the plain transform: Resize + CenterCrop),
    the first model.head_init_images per class in stream order (0: all; on several ranks each takes
    ceil(N / world)), with the modules attached or not (model.head_init_features)."""
    C = train.num_classes
    per_class = cfg.model.head_init_images
    # Every rank takes up to ceil(cap / world): exact on one rank (LIFT+'s first N of each class in stream
    # order), at most world - 1 over the cap in all. Exact shares (summing to the cap) would leave a
    # class whose images all sit on a rank with a zero share without any when cap < world.
    cap = math.ceil(per_class / info.world) if per_class else None
    counts = torch.zeros(C, dtype=torch.int64)
    plan = ShardPlan(len(train.shard_files), train.shard_samples, cfg.seed, info.world)
    stream = ShardStream(train, plan, info.rank, FixedEpoch(), plain_transform(resolution, cfg.data.interpolation),
                         train=False, num_classes=C, cache_dir=cfg.data.shard_cache)
    frozen = model.encoder.without_modules() if cfg.model.head_init_features == "frozen" else contextlib.nullcontext()
    model.eval()
    with torch.no_grad(), frozen:
        for x, y, _ in loader_batches(make_loader(stream, 0), 64):
            if cap is not None:
                keep = _within_cap(y, counts, cap)
                x, y = x[keep], y[keep]
            if len(y):
                on_batch(model.features(x.to(info.device)).double().cpu(), y)
    model.train()


def _within_cap(y: torch.Tensor, counts: torch.Tensor, cap: int) -> torch.Tensor:
    """Which samples of the batch `y` to keep so that no class passes `cap`, counting the batch's own
    samples in stream order; `counts` is updated."""
    keep = torch.zeros(len(y), dtype=torch.bool)
    for i, c in enumerate(y.tolist()):
        if counts[c] < cap:
            counts[c] += 1
            keep[i] = True
    return keep


def _class_mean(model, cfg, info: DistInfo, train: Manifest, resolution: int) -> None:
    C = train.num_classes
    sums = torch.zeros(C, model.head.weight.shape[1], dtype=torch.float64)
    counts = torch.zeros(C, dtype=torch.int64)

    def add(feats, y):
        sums.index_add_(0, y, feats)
        counts.add_(torch.bincount(y, minlength=C))

    _features(model, cfg, info, train, resolution, add)
    all_reduce_sum_(sums, info.device)
    all_reduce_sum_(counts, info.device)
    empty = [train.class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise DataError(f"class-mean head init: no training image for class(es) {', '.join(empty[:5])}")
    model.head.set_weight(torch.nn.functional.normalize((sums / counts[:, None]).float(), dim=1))


def _linear_probe(model, cfg, info: DistInfo, train: Manifest, resolution: int) -> None:
    """Every rank's features go to rank 0, which fits the probe; its weights are broadcast."""
    feats, labels = [], []
    _features(model, cfg, info, train, resolution, lambda f, y: (feats.append(f.float()), labels.append(y)))
    parts = [(torch.cat(feats) if feats else torch.zeros(0, model.head.weight.shape[1]),
              torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64))]
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, parts[0])  # in memory, between the run's own processes
        parts = gathered
    w = torch.zeros_like(model.head.weight, device="cpu")
    if info.is_main:
        w = linear_probe_weights(torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts]), train.num_classes,
                                 train.class_names)
    broadcast_(w, info.device)
    model.head.set_weight(w)
