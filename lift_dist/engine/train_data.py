"""One rank's training batches: shards decoded and augmented in loader workers, or the feature cache.

Exact epochs give ranks different sample counts; every rank still takes the same number of steps, the
shorter ranks repeating their last batch with weight 0 (`Batch.real` = 0) so the collectives stay in
step. A resumed epoch replays the data order up to its resume point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lift_dist.data.device_decode import DeviceDecoder
from lift_dist.data.pipeline import (
    ShardPlan,
    ShardStream,
    loader_batches,
    make_loader,
    rebatch,
    sample_weights_for_step,
    steps_in_epoch,
)
from lift_dist.transforms import (
    SharedEpoch,
    eval_transform,
    lift_train_transform,
    minimalist_train_transform,
    normalize_uint8,
    uint8_output,
)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    real: int  # samples that count (0: a padding batch of a rank that ran out)
    wait_s: float  # time spent waiting for it


def train_transform(cfg, resolution: int, epoch: SharedEpoch):
    d = cfg.data
    if d.augment == "mda":
        tf = minimalist_train_transform(resolution, cfg.optim.epochs, d.mda_schedule, epoch, interpolation=d.interpolation)
    elif d.augment == "lift":
        tf = lift_train_transform(resolution, interpolation=d.interpolation)
    else:
        tf = eval_transform(resolution, interpolation=d.interpolation)
    return uint8_output(tf)  # workers ship uint8; normalised per batch on the device


class TrainData:
    def __init__(self, cfg, plan, info, resolution: int, cache=None):
        self.cfg, self.info, self.cache = cfg, info, cache
        self.micro, self.accum = plan.micro, plan.accum
        train = plan.train
        self.shards = ShardPlan(len(train.shard_files), train.shard_samples, cfg.seed, info.world)
        self.resampled = cfg.data.epoch_mode == "resampled"
        self.per_rank_resampled = math.ceil(train.num_samples / info.world)
        self.epoch = SharedEpoch(0)
        self.loader = self.device_decoder = None
        if cache is None:
            d = cfg.data
            stream = ShardStream(
                train, self.shards, info.rank, self.epoch, train_transform(cfg, resolution, self.epoch), train=True,
                num_classes=train.num_classes, shuffle_buffer=d.shuffle_buffer, resampled=self.resampled, seed=cfg.seed,
                samples_per_rank=self.per_rank_resampled, decode_min_side=resolution * 8 // 7 if d.jpeg_draft else None,
                decode_to_tensor=True, defer_decode=d.decode_device == "cuda", retries=d.shard_retries if train.remote else 0,
                cache_dir=d.shard_cache)
            self.loader = make_loader(stream, d.workers)
            self.device_decoder = DeviceDecoder(info.device) if d.decode_device == "cuda" else None

    def rank_counts(self, epoch: int) -> list[int]:
        if self.resampled:
            return [self.per_rank_resampled] * self.info.world
        return [self.shards.rank_samples(epoch, r) for r in range(self.info.world)]

    def steps(self, epoch: int) -> int:
        return steps_in_epoch(self.rank_counts(epoch), self.micro, self.accum)

    def real_samples(self, epoch: int, step: int) -> int:
        """Samples over all ranks in optimizer step `step` of `epoch` (the loss weights divide by it)."""
        return sample_weights_for_step(self.rank_counts(epoch), self.micro, self.accum, step)

    def batches(self, epoch: int, skip_steps: int = 0) -> Iterator[Batch]:
        """Micro-batches of `epoch` for this rank, forever (padding after the end), from step `skip_steps`."""
        self.epoch.set(epoch)
        if self.cache is not None:
            source = self.cache.batches(self.shards, epoch, self.info.rank, self.cfg.seed, self.micro)
        elif self.device_decoder is not None:  # JPEGs decoded on the GPU, chunk by chunk, then re-cut there
            source = rebatch(self.device_decoder(iter(self.loader)), self.micro)
        else:
            source = loader_batches(self.loader, self.micro)
        last = None
        for _ in range(skip_steps * self.accum):  # replay the epoch's data order up to the resume point
            last = next(source, None) or last
        while True:
            t0 = time.perf_counter()
            b = next(source, None)
            wait = time.perf_counter() - t0
            if b is None:
                break
            last = b
            yield Batch(b[0], b[1], len(b[1]), wait)
        while last is not None:  # this rank has run out: zero-weight batches keep the collectives in step
            yield Batch(last[0], last[1], 0, 0.0)

    def forward(self, engine, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.info.device, non_blocking=True)
        if self.cache is not None:
            return engine(x, cached_from=self.cache.cut)
        return engine(normalize_uint8(x))  # autocast (bf16) is applied by the engine (deepspeed_config)

    def close(self) -> None:
        self.loader = None  # the last reference: PyTorch shuts the persistent workers down
