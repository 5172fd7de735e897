"""The sweep's objective is measured on a validation split held out from the TRAINING shards, never on
the test set: up to `val_per_class` images of every class (never more than half of a class), chosen
with a seeded shuffle, go to `val`; the rest to `train`. Both are written by the shard builder from
the source shards (image bytes copied as they are), with as many shards as the source, so the same
ranks × workers can read them.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pyarrow.parquet as pq

from lift_dist.data.location import is_remote, join, read_bytes
from lift_dist.data.manifest import check_table, read_manifest
from lift_dist.errors import DataError
from lift_dist.run_dir import write_atomic, write_json
from lift_dist.shards import BuildOptions, build
from lift_dist.shards.from_shards import index_shards, sample_label, shard_members

DONE = "holdout.json"


def choose_validation(root: Path, split: str, val_per_class: int, seed: int) -> set[str]:
    keys_by_class: dict[int, list[str]] = {}
    m = read_manifest(root, split)
    for shard in m.shard_files:
        for s in shard_members(shard):
            keys_by_class.setdefault(sample_label(s, shard, m.num_classes), []).append(s["key"])
    rng = random.Random(seed)
    val: set[str] = set()
    for _, keys in sorted(keys_by_class.items()):
        keys = sorted(keys)
        rng.shuffle(keys)
        val.update(keys[: min(val_per_class, len(keys) // 2)])
    if not val:
        raise DataError(f"{root}: no class has 2 or more training images; nothing can be held out for validation")
    return val


def local_copy(shards: str, split: str, dest: Path, pipe: str | None, retries: int) -> Path:
    """A remote split downloaded into `dest` as it is (manifests, then the shards not there yet)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (f"{split}-classes.parquet", f"{split}-shards.parquet", f"{split}-summary.json"):
        write_atomic(dest / name, read_bytes(join(shards, name), pipe, retries))
    manifest = dest / f"{split}-shards.parquet"
    table = pq.read_table(manifest).to_pydict()
    check_table(join(shards, manifest.name), table)  # its paths stay inside `dest`
    for name in table.get("path", []):
        if not (dest / name).is_file():
            write_atomic(dest / name, read_bytes(join(shards, name), pipe, retries))
    return dest


def make_holdout(shards, out: Path, split: str, val_per_class: int, seed: int, pipe: str | None = None,
                 retries: int = 3) -> Path:
    """Write `out/train` and `out/val` from `shards/{split}` (kept when already made from the same source)."""
    source = str(shards) if is_remote(shards) else str(Path(shards).resolve())
    record = {"source": source, "split": split, "val_per_class": val_per_class, "seed": seed}
    done = out / DONE
    if done.is_file() and {k: v for k, v in json.loads(done.read_text()).items() if k in record} == record:
        return out
    if is_remote(shards):
        shards = local_copy(shards, split, out.parent / "source", pipe, retries)
    source = read_manifest(shards, split)
    val = choose_validation(shards, split, val_per_class, seed)
    n_shards = len(source.shard_files)
    parts = {"train": lambda key, label: key not in val, "val": lambda key, label: key in val}
    counts = {"train": source.num_samples - len(val), "val": len(val)}
    for part, keep in parts.items():
        opts = BuildOptions(out=out, split=part, resize=None, shard_size=max(1, math.ceil(counts[part] / n_shards)),
                            seed=seed, progress=False)
        build(lambda train, keep=keep: index_shards(shards, split, keep, train), opts)
    write_json(done, record | counts)
    return out
