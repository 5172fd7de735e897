"""Re-read a shard set with stock webdataset and compare it with its manifests.

Checks per split: every listed shard exists with the listed size and sha256; reading it yields the
listed number of samples, each with `jpg`, `cls` (an integer label inside the class table) and `json`;
keys are unique; per-class counts match the classes table (`split_count`, and `count` for train); the
summary's sample count matches; no unlisted shard files of the split lie beside them.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from lift_dist.data import manifest as mf
from lift_dist.errors import DataError
from lift_dist.shards.writer import sha256_file

MAX_PER_SHARD = 5  # sample-level problems named per shard


def verify(out: str | os.PathLike, splits: list[str] | None = None, *, decode: bool = False) -> list[str]:
    """Problems found (empty list = the shard set matches its manifests). `decode` also decodes every JPEG."""
    out = Path(out)
    if not out.is_dir():
        return [f"{out} is not a directory"]
    splits = splits or mf.splits_in(out)
    if not splits:
        return [f"{out} holds no shard manifests (*-shards.parquet)"]
    problems: list[str] = []
    for split in splits:
        problems += [f"{split}: {p}" for p in _verify_split(out, split, decode)]
    return problems


def _verify_split(out: Path, split: str, decode: bool) -> list[str]:
    try:
        m = mf.read_manifest(out, split)
    except DataError as e:
        return [str(e)]
    problems: list[str] = []
    rows = pq.read_table(mf.shards_path(out, split)).to_pydict()
    num_classes = m.num_classes
    seen = np.zeros(num_classes, dtype=np.int64)
    keys: dict[str, str] = {}
    for path, n_listed, nbytes, sha in zip(m.shard_files, rows["num_samples"], rows["bytes"], rows["sha256"]):
        name = path.name
        size = path.stat().st_size
        if size != nbytes:
            problems.append(f"{name}: {size} bytes on disk, manifest says {nbytes}")
        if sha256_file(path) != sha:
            problems.append(f"{name}: sha256 differs from the manifest (changed or corrupt file)")
        n, local = 0, []
        try:
            for s in wds.WebDataset(str(path), shardshuffle=False, empty_check=False):
                n += 1
                local += _check_sample(s, name, num_classes, seen, keys, decode)
        except Exception as e:
            problems.append(f"{name}: cannot be read to the end by webdataset after {n} sample(s) ({type(e).__name__}: {e})")
        if len(local) > MAX_PER_SHARD:
            local = local[:MAX_PER_SHARD] + [f"{name}: ... and {len(local) - MAX_PER_SHARD} more sample problem(s)"]
        problems += local
        if n != n_listed:
            problems.append(f"{name}: holds {n} sample(s), manifest says {n_listed}")

    split_counts = m.extra_class_columns.get("split_count")
    expected = [("split_count", np.asarray(split_counts, dtype=np.int64))] if split_counts is not None else []
    if split == "train":
        expected.append(("count", m.train_counts))
    for column, want in expected:
        diff = np.flatnonzero(want != seen)
        if len(diff):
            shown = ", ".join(f"label {i}: {seen[i]} read vs {want[i]}" for i in diff[:5])
            problems.append(f"per-class counts differ from column '{column}' of {mf.classes_path(out, split).name} "
                            f"for {len(diff)} class(es): {shown}")
    total = int(seen.sum())
    if "samples" in m.summary and m.summary["samples"] != m.num_samples:
        problems.append(f"summary says {m.summary['samples']} samples, the shard list {m.num_samples}")
    if total > m.num_samples:
        problems.append(f"read {total} samples, the shard list says {m.num_samples}")
    listed = {p.name for p in m.shard_files}
    unlisted = sorted(p.name for p in out.iterdir() if mf.shard_index(split, p.name) is not None and p.name not in listed)
    if unlisted:
        problems.append(f"{len(unlisted)} shard file(s) not in the manifest, e.g. {unlisted[0]}")
    return problems


def _check_sample(s: dict, shard: str, num_classes: int, seen: np.ndarray, keys: dict, decode: bool) -> list[str]:
    key = s.get("__key__", "?")
    where = f"{shard}: sample '{key}'"
    if key in keys:
        return [f"{where}: key also used in {keys[key]}"]
    keys[key] = shard
    missing = [k for k in ("jpg", "cls", "json") if k not in s]
    if missing:
        return [f"{where} lacks {', '.join(missing)}"]
    try:
        label = int(s["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return [f"{where}: 'cls' is not an integer ({s['cls'][:20]!r})"]
    if not 0 <= label < num_classes:
        return [f"{where}: label {label} outside 0..{num_classes - 1}"]
    seen[label] += 1
    try:
        json.loads(s["json"])
    except ValueError:
        return [f"{where}: 'json' is not valid JSON"]
    if decode:
        try:
            Image.open(io.BytesIO(s["jpg"])).load()
        except Exception as e:
            return [f"{where}: image cannot be decoded ({type(e).__name__}: {e})"]
    return []
