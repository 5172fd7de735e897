"""The shard builders, one per source, as `lift_dist.shards` exports them."""

from __future__ import annotations

import os

from lift_dist.shards.builder import build
from lift_dist.shards.cifar100 import index_cifar100
from lift_dist.shards.folder import index_image_folder
from lift_dist.shards.inat2018 import index_inat2018
from lift_dist.shards.listfile import index_list
from lift_dist.shards.options import DEFAULT_QUALITY, DEFAULT_RESIZE, DEFAULT_SHARD_SIZE, BuildOptions
from lift_dist.shards.verification import verify

__all__ = ["BuildOptions", "build", "build_cifar100", "build_from_list", "build_image_folder", "build_inat2018", "verify"]


def _options(out, split, train_counts_from, resize, shard_size, workers, seed, skip_bad, quality, progress) -> BuildOptions:
    return BuildOptions(out=out, split=split, resize=resize, quality=quality, shard_size=shard_size, workers=workers,
                        seed=seed, skip_bad=skip_bad, train_manifest=train_counts_from, progress=progress)


def build_image_folder(root: str | os.PathLike, out: str | os.PathLike, split: str, *,
                       train_counts_from: str | os.PathLike | None = None, resize: int | None = DEFAULT_RESIZE,
                       shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 1, seed: int = 0, skip_bad: bool = False,
                       quality: int = DEFAULT_QUALITY, progress: bool | None = None) -> dict:
    """`root/<class>/<image>` (classes = sorted folder names) -> `out/{split}-*`. Non-train splits take
    the label map and counts from `train_counts_from` (default: `out`)'s train-classes.parquet."""
    opts = _options(out, split, train_counts_from, resize, shard_size, workers, seed, skip_bad, quality, progress)
    return build(lambda train: index_image_folder(root, train), opts)


def build_from_list(list_file: str | os.PathLike, image_root: str | os.PathLike, class_names_file: str | os.PathLike,
                    out: str | os.PathLike, split: str, *, train_counts_from: str | os.PathLike | None = None,
                    resize: int | None = DEFAULT_RESIZE, shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 1,
                    seed: int = 0, skip_bad: bool = False, quality: int = DEFAULT_QUALITY,
                    progress: bool | None = None) -> dict:
    """A LIFT list (`<path relative to image_root> <label>` per line) with a class-names file
    (`classnames.txt`: `<folder-or-wnid> <name...>`, or an iNaturalist categories.json)."""
    opts = _options(out, split, train_counts_from, resize, shard_size, workers, seed, skip_bad, quality, progress)
    return build(lambda train: index_list(list_file, image_root, class_names_file, train), opts)


def build_inat2018(root: str | os.PathLike, out: str | os.PathLike, split: str, *, annotations=None, categories=None,
                   level: str = "species", label_scheme: str = "official",
                   train_counts_from: str | os.PathLike | None = None, resize: int | None = DEFAULT_RESIZE,
                   shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 1, seed: int = 0, skip_bad: bool = False,
                   quality: int = DEFAULT_QUALITY, progress: bool | None = None) -> dict:
    """The official iNaturalist 2018 release in `root` ({split}2018.json, categories.json, images)."""
    opts = _options(out, split, train_counts_from, resize, shard_size, workers, seed, skip_bad, quality, progress)
    return build(lambda train: index_inat2018(root, split, annotations=annotations, categories=categories, level=level,
                                              scheme=label_scheme, train=train), opts)


def build_cifar100(archive: str | os.PathLike, out: str | os.PathLike, split: str, *, imbalance: float | None = 100.0,
                   train_counts_from: str | os.PathLike | None = None, resize: int | None = DEFAULT_RESIZE,
                   shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 1, seed: int = 0, skip_bad: bool = False,
                   quality: int = 95, progress: bool | None = None) -> dict:
    """CIFAR-100 from cifar-100-python.tar.gz; the train split long-tail subsampled to `imbalance`
    (100 / 50 / 10 in LIFT; None keeps the balanced set), the test split complete."""
    opts = _options(out, split, train_counts_from, resize, shard_size, workers, seed, skip_bad, quality, progress)
    return build(lambda train: index_cifar100(archive, split, imbalance=imbalance, train=train), opts)
