"""Shard sets for tests: the small long-tailed demo set, and crafted damage with consistent manifests."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lift_dist.data import manifest as mf
from lift_dist.shards import build_image_folder
from lift_dist.synthetic import long_tail_counts, write_image_folder

DEMO_COUNTS = long_tail_counts(10, 60, 20)  # 10 classes, 60 … 3 images


def build_demo_shards(root: Path) -> Path:
    """10 classes (60 … 3 training images), 6 train + 2 test shards of 48 px images."""
    write_image_folder(root / "img" / "train", DEMO_COUNTS, size=48, seed=0)
    write_image_folder(root / "img" / "test", [6] * 10, size=48, seed=1)
    out = root / "shards"
    build_image_folder(root / "img" / "train", out, "train", shard_size=(sum(DEMO_COUNTS) + 5) // 6, seed=0, progress=False)
    build_image_folder(root / "img" / "test", out, "test", train_counts_from=out, shard_size=30, seed=0, progress=False)
    return out


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def write_tar(path: Path, entries: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def damaged_copy(src: Path, dst: Path, split: str, mutate, shard: int = 0) -> Path:
    """A copy of shard set `src` whose `split` shard number `shard` went through mutate(entries) -> entries,
    its manifest row updated (bytes, sha256, but the sample count as it was): only the content is wrong."""
    shutil.copytree(src, dst)
    rows = pq.read_table(mf.shards_path(dst, split)).to_pydict()
    tar = dst / rows["path"][shard]
    write_tar(tar, mutate(read_tar(tar)))
    rows["bytes"][shard] = tar.stat().st_size
    rows["sha256"][shard] = hashlib.sha256(tar.read_bytes()).hexdigest()
    pq.write_table(pa.table(rows), mf.shards_path(dst, split))
    return tar
