"""The classifier head's initial weights in a distributed run (LIFT §4.1, LIFT+ §5.2).

semantic: text features of the class prompts, computed once on rank 0 and broadcast; class_mean:
the mean feature of up to 100 training images per class (with the modules attached), summed over
ranks; random: the head's own init, identical on every rank (fixed seed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from lift_dist.data.manifest import Manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, make_loader, rebatch
from lift_dist.engine.collectives import all_reduce_sum_, broadcast_
from lift_dist.engine.distributed import DistInfo
from lift_dist.errors import DataError
from lift_dist.head_init import semantic_weights
from lift_dist.model.backbone import get_tokenizer
from lift_dist.transforms import eval_transform

CLASS_MEAN_IMAGES = 100  # per class, as LIFT+


def init_head(model, clip, cfg, info: DistInfo, train: Manifest, resolution: int) -> None:
    if cfg.model.head_init == "semantic":
        _semantic(model, clip, cfg.model, info, train.class_names)
    elif cfg.model.head_init == "class_mean":
        _class_mean(model, cfg, info, train, resolution)


def _semantic(model, clip, mcfg, info: DistInfo, class_names: list[str]) -> None:
    w = torch.zeros_like(model.head.weight, device="cpu")
    if info.is_main:
        descriptions = json.loads(Path(mcfg.descriptions).read_text()) if mcfg.prompt == "descriptions" else None
        w = semantic_weights(clip, get_tokenizer(mcfg.name), class_names, prompt=mcfg.prompt, template=mcfg.template,
                             descriptions=descriptions).float()
    broadcast_(w, info.device)
    model.head.set_weight(w)


def _class_mean(model, cfg, info: DistInfo, train: Manifest, resolution: int) -> None:
    C = train.num_classes
    cap = math.ceil(CLASS_MEAN_IMAGES / info.world)
    sums = torch.zeros(C, model.head.weight.shape[1], dtype=torch.float64)
    counts = torch.zeros(C, dtype=torch.int64)
    plan = ShardPlan(len(train.shard_files), train.shard_samples, cfg.seed, info.world)
    stream = ShardStream(train, plan, info.rank, FixedEpoch(), eval_transform(resolution, cfg.data.interpolation),
                         train=False, num_classes=C)
    model.eval()
    with torch.no_grad():
        for x, y, _ in rebatch(iter(make_loader(stream, 0)), 64):
            keep = torch.tensor([counts[int(c)] < cap for c in y])
            if not keep.any():
                continue
            x, y = x[keep], y[keep]
            sums.index_add_(0, y, model.features(x.to(info.device)).double().cpu())
            counts += torch.bincount(y, minlength=C)
    all_reduce_sum_(sums, info.device)
    all_reduce_sum_(counts, info.device)
    empty = [train.class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise DataError(f"class-mean head init: no training image for class(es) {', '.join(empty[:5])}")
    model.head.set_weight(torch.nn.functional.normalize((sums / counts[:, None]).float(), dim=1))
    model.train()
