"""Cached frozen features: train head-only or last-k runs without re-running the frozen blocks.

When augmentation is off, everything before the first block a module touches is a fixed function of
the image, so its output can be computed once and read back every epoch. The cache is opt-in
(`data.feature_cache=DIR`) and lives in `DIR/<key>/`, where the key hashes everything that decides
those features (model, weights, resolution, interpolation, cut point, precision, the shards' sha256);
change any of them and a new cache is built beside the old one.

    DIR/<key>/meta.json                       what the key was computed from (for people)
    DIR/<key>/shard-000042.features.npy       float32/float16 (n, D) or (n, tokens, D), one per shard
    DIR/<key>/shard-000042.labels.npy         int64 (n,)

One file pair per shard, written to a temporary name and renamed, so an interrupted build keeps what
it finished and any world size can read any cache. Ranks build disjoint shards, then read all.
Training order matches exact epochs: the (seed, epoch) shard order split across ranks, then a seeded
full shuffle of each rank's samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lift_dist.config import no_frozen_part
from lift_dist.data.manifest import Manifest
from lift_dist.data.pipeline import ShardPlan, _stable_seed, decode_sample, shard_cache, shard_samples
from lift_dist.errors import ConfigError, DataError
from lift_dist.transforms import eval_transform

FORMAT_VERSION = 2  # 2: activation in the key (QuickGELU forced for the 'openai' tag)
DTYPES = {"float32": np.float32, "float16": np.float16}


def weights_identity(pretrained: str | None) -> str:
    """A local weights file is named by path, size and mtime (hashing GBs each run costs too much)."""
    if pretrained and Path(pretrained).is_file():
        st = Path(pretrained).stat()
        return f"file:{Path(pretrained).resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return f"tag:{pretrained}" if pretrained else "random-init-seed-0"


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _from_rank0(obj):
    box = [obj]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(obj) -> list:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@dataclass
class FeatureCache:
    directory: Path
    cut: int  # features entering block `cut`; cut == num_layers + 1: the final ln_post(CLS) feature
    manifest: Manifest
    dtype: str
    retries: int = 0  # for remote shards (data.shard_retries)
    shard_cache: str | None = None

    # ---- building -----------------------------------------------------------------------------
    @classmethod
    def prepare(cls, model, cfg, manifest: Manifest, info, resolution: int, precision: str, log=print) -> FeatureCache:
        """Find or build this run's cache (every rank builds its share of missing shards), then barrier."""
        d = cfg.data  # augment=none, exact epochs and the dtype are checked by config.validate
        cut = model.encoder.frozen_prefix()
        if cut == 0:  # config validation refuses this first (RunConfig); the built model has the last word
            raise ConfigError(no_frozen_part(cfg.model.peft))
        blk = model.encoder.blocks[0].block
        parts = {
            "format": FORMAT_VERSION, "model": cfg.model.name, "weights": weights_identity(cfg.model.pretrained),
            "activation": type(blk.mlp.gelu).__name__, "resolution": resolution, "interpolation": d.interpolation,
            "jpeg_draft": d.jpeg_draft, "cut": cut, "precision": precision, "dtype": d.cache_dtype, "split": manifest.split,
            "shards": manifest.shard_sha256,
        }
        directory = Path(d.feature_cache) / cache_key(parts)
        cache = cls(directory, cut, manifest, d.cache_dtype, d.shard_retries if manifest.remote else 0, d.shard_cache)
        # Rank 0 decides what is missing and whether the build succeeded, and every rank follows that
        # decision: ranks that looked at a shared (NFS) cache on their own could disagree and then hang
        # in different collectives.
        missing = None
        if info.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            meta = directory / "meta.json"
            if not meta.is_file():  # concurrent runs (sweep trials) may race here: private temp names
                tmp = meta.with_name(f"meta.json.tmp{os.getpid()}")
                tmp.write_text(json.dumps(parts | {"num_samples": manifest.num_samples}, indent=2))
                os.replace(tmp, meta)
            missing = [i for i in range(len(manifest.shard_files)) if not cache.has_shard(i)]
            what = "final features" if cut > model.encoder.num_layers else f"tokens entering block {cut}"
            log(f"feature cache {directory}: {what}; "
                + (f"building {len(missing)} of {len(manifest.shard_files)} shard(s)" if missing else "complete, reused"))
        missing = _from_rank0(missing)
        error = ""
        try:
            mine = missing[info.rank :: info.world]
            if mine:
                cache._build(model, mine, resolution, d, info.device, precision)
        except Exception as e:  # every rank must reach the collective below, then all fail together
            error = f"rank {info.rank}: {type(e).__name__}: {e}"
        errors = [e for e in _gather(error) if e]
        if errors:
            raise DataError(f"feature cache {directory}: building failed on {len(errors)} rank(s); {errors[0]}")
        still = _from_rank0([i for i in range(len(manifest.shard_files)) if not cache.has_shard(i)] if info.is_main else None)
        if still:
            raise DataError(f"feature cache {directory}: shard(s) {still[:5]} were not written")
        return cache

    def _paths(self, i: int) -> tuple[Path, Path]:
        stem = self.directory / f"shard-{i:06d}"
        return Path(f"{stem}.features.npy"), Path(f"{stem}.labels.npy")

    def has_shard(self, i: int) -> bool:
        fp, lp = self._paths(i)
        if not (fp.is_file() and lp.is_file()):
            return False
        try:  # both files' headers (a damaged features file must be rebuilt, not read by every later run)
            n = self.manifest.shard_samples[i]
            return np.load(lp, mmap_mode="r").shape[0] == n and np.load(fp, mmap_mode="r").shape[0] == n
        except (OSError, ValueError, EOFError):
            return False

    def _build(self, model, shards: list[int], resolution: int, d, device: torch.device, precision: str) -> None:
        tf = eval_transform(resolution, d.interpolation)
        min_side = resolution * 8 // 7 if d.jpeg_draft else None
        was_training = model.training
        model.eval()
        for i in shards:
            feats, labels = self._encode_shard(model, i, tf, min_side, device, precision)
            fp, lp = self._paths(i)
            for path, arr in ((fp, feats), (lp, labels)):
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                with open(tmp, "wb") as f:
                    np.save(f, arr)
                os.replace(tmp, path)
        model.train(was_training)

    def _encode_shard(self, model, i: int, tf, min_side, device: torch.device, precision: str):
        """(features, labels) of shard i, encoded 64 images at a time."""
        url = str(self.manifest.shard_files[i])
        feats, labels, images = [], [], []
        samples = shard_samples(url, self.retries, shard_cache(self.shard_cache))
        for sample in samples:
            img, label, _ = decode_sample(sample, self.manifest.num_classes, min_side)
            images.append(tf(img))
            labels.append(label)
            if len(images) == 64:
                feats.append(self._encode(model, images, device, precision))
                images = []
        if images:
            feats.append(self._encode(model, images, device, precision))
        if len(labels) != self.manifest.shard_samples[i]:
            raise DataError(f"shard {url} holds {len(labels)} samples but its manifest says {self.manifest.shard_samples[i]}")
        return np.concatenate(feats), np.asarray(labels, dtype=np.int64)

    def _encode(self, model, images: list, device: torch.device, precision: str) -> np.ndarray:
        x = torch.stack(images).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            f = model.encoder.forward_to(x, self.cut)
        return f.float().cpu().numpy().astype(DTYPES[self.dtype])

    # ---- reading ------------------------------------------------------------------------------
    def batches(self, plan: ShardPlan, epoch: int, rank: int, seed: int, batch_size: int) -> Iterator[tuple]:
        """This rank's epoch as (features, labels, keys) batches; keys are 'shard:row'."""
        shards = plan.rank_shards(epoch, rank, shuffle=True)
        arrays = {i: (np.load(self._paths(i)[0], mmap_mode="r"), np.load(self._paths(i)[1])) for i in shards}
        index = [(i, row) for i in shards for row in range(len(arrays[i][1]))]
        random.Random(_stable_seed("cache", seed, epoch, rank)).shuffle(index)
        for lo in range(0, len(index), batch_size):
            part = index[lo : lo + batch_size]
            x = torch.from_numpy(np.stack([arrays[i][0][row] for i, row in part]).astype(np.float32))
            y = torch.from_numpy(np.asarray([arrays[i][1][row] for i, row in part], dtype=np.int64))
            yield x, y, [f"{i}:{row}" for i, row in part]
