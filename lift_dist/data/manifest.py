"""The shard-set manifest: the contract between `shards/` (writer) and the trainer (reader).

A shard directory OUT holds, per split (train, val, test, ...):

    OUT/{split}-000000.tar ...        WebDataset shards; each sample has keys
                                      `jpg` (JPEG bytes), `cls` (label as ASCII text),
                                      `json` (image id, file name, category id, taxonomy)
    OUT/{split}-classes.parquet       one row per label 0..C-1: label, name, count, group
                                      (+ taxonomy columns for iNat). `count` and `group`
                                      are always the TRAIN split's counts, also in val/test.
    OUT/{split}-shards.parquet        one row per shard: path (file name relative to OUT),
                                      num_samples, bytes, sha256
    OUT/{split}-summary.json          samples, classes, imbalance_ratio, label_scheme, tool_version, ...
    OUT/{split}-errors.parquet        only when bad items were found: item, reason
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lift_dist.data import location
from lift_dist.errors import DataError

# Head/medium/tail thresholds on TRAIN counts (LIFT): head > 100, medium 20..100, tail < 20.
HEAD_MIN_EXCLUSIVE = 100
TAIL_MAX_EXCLUSIVE = 20
GROUPS = ("head", "medium", "tail")

CLASS_COLUMNS = ("label", "name", "count", "group")
# The entries of a sample that hold its image; only these are ever decoded (nothing in a shard is unpickled).
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SHARD_COLUMNS = ("path", "num_samples", "bytes", "sha256")


def group_of(count: int) -> str:
    if count > HEAD_MIN_EXCLUSIVE:
        return "head"
    if count >= TAIL_MAX_EXCLUSIVE:
        return "medium"
    return "tail"


def classes_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"{split}-classes.parquet"


def shards_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"{split}-shards.parquet"


def summary_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"{split}-summary.json"


def errors_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"{split}-errors.parquet"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


@dataclass
class Manifest:
    """What the trainer needs to know about one split of a shard set."""

    root: Path | str
    split: str
    class_names: list[str]
    train_counts: np.ndarray  # int64 (C,), training-split counts per label
    groups: list[str]  # head / medium / tail per label
    shard_files: list  # absolute paths, or for a remote set what gopen opens (URLs, pipe: commands)
    shard_samples: list[int]
    shard_sha256: list[str]
    summary: dict = field(default_factory=dict)
    extra_class_columns: dict = field(default_factory=dict)
    shard_bytes: list[int] = field(default_factory=list)
    remote: bool = False  # shard_files are URLs (or pipe: commands), not paths

    def check_sizes(self) -> None:
        """Every shard still has the size its manifest lists (a cheap stat; `verify` checks sha256).
        Caught here, a replaced or truncated shard stops every rank at start-up, not one rank mid-epoch.
        Remote shards have no cheap stat: their sample counts are checked as they are read."""
        if self.remote:
            return
        for f, expected in zip(self.shard_files, self.shard_bytes):
            actual = f.stat().st_size
            if actual != expected:
                raise DataError(f"shard {f} is {actual} bytes but its manifest says {expected}: it changed after the "
                                f"build; rebuild it (shards/build.py resumes) or run `shards/build.py verify {self.root}`")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_samples(self) -> int:
        return int(sum(self.shard_samples))


def read_manifest(root, split: str, pipe: str | None = None, retries: int = 3) -> Manifest:
    """Read and sanity-check one split's manifest, from a directory or a URL prefix (data/location.py);
    errors name the file and what is wrong. `shard_files` are what the stream opens."""
    remote = location.is_remote(root)
    if not remote:
        root = location.local_path(root)
        _check_local(root, split)
    cpath, spath = location.join(root, f"{split}-classes.parquet"), location.join(root, f"{split}-shards.parquet")
    classes = _read_table(cpath, pipe, retries, CLASS_COLUMNS)
    labels = list(classes["label"])
    if labels != list(range(len(labels))):
        raise DataError(f"{cpath}: labels must be 0..{len(labels) - 1} in order")
    shards = _read_table(spath, pipe, retries, SHARD_COLUMNS)
    files = [location.join(root, p) for p in shards["path"]]
    absent = [] if remote else [str(f) for f in files if not f.is_file()]
    if absent:
        raise DataError(f"{spath} lists {len(absent)} shard(s) that do not exist, e.g. {absent[0]}")
    if not files:
        raise DataError(f"{spath} lists no shards")
    summary_file = location.join(root, f"{split}-summary.json")
    summary = _read_summary(summary_file, pipe, retries) if remote or Path(summary_file).is_file() else {}
    return Manifest(
        root=root, split=split, class_names=[str(n) for n in classes["name"]],
        train_counts=np.asarray(classes["count"], dtype=np.int64), groups=[str(g) for g in classes["group"]],
        shard_files=[location.openable(f, pipe) for f in files] if remote else files,
        shard_samples=[int(n) for n in shards["num_samples"]], shard_sha256=[str(s) for s in shards["sha256"]],
        shard_bytes=[int(b) for b in shards["bytes"]], summary=summary,
        extra_class_columns={k: v for k, v in classes.items() if k not in CLASS_COLUMNS}, remote=remote)


def _read_summary(path, pipe, retries) -> dict:
    data = location.read_bytes(path, pipe, retries)
    try:
        summary = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON ({type(e).__name__}: {e}); rebuild the split or restore the file") from None
    if not isinstance(summary, dict):
        raise DataError(f"{path} must hold a JSON object (the build's summary), not a {type(summary).__name__}")
    return summary


def _check_local(root: Path, split: str) -> None:
    if not root.is_dir():
        raise DataError(f"shard directory {root} does not exist")
    for p in (classes_path(root, split), shards_path(root, split)):
        if not p.is_file():
            present = sorted(x.name for x in root.glob("*-shards.parquet"))
            raise DataError(
                f"{p} is missing: {root} holds no '{split}' split"
                + (f" (found: {', '.join(present)})" if present else " (it holds no shard manifests at all)"))


def _read_table(path, pipe: str | None, retries: int, columns: tuple) -> dict:
    try:
        table = pq.read_table(pa.BufferReader(location.read_bytes(path, pipe, retries))).to_pydict()
    except pa.ArrowInvalid as e:
        raise DataError(f"{path} is not a readable parquet file ({e})") from None
    missing = [c for c in columns if c not in table]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}")
    check_table(path, table)
    return table


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _text(v) -> bool:
    return isinstance(v, str)


def safe_relative(v) -> bool:
    """A path inside the shard directory: relative, no '..', no empty part (a manifest names its own files)."""
    if not isinstance(v, str) or not v or "\0" in v or "\\" in v or v.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in v.split("/"))


COLUMN_RULES = {  # column -> (test, what is allowed)
    "path": (safe_relative, "a relative path inside the shard directory (no '..', not absolute)"),
    "num_samples": (_count, "an integer >= 0"), "bytes": (_count, "an integer >= 0"), "count": (_count, "an integer >= 0"),
    "sha256": (_text, "a hex string"), "name": (_text, "a string"), "group": (lambda v: v in GROUPS, f"one of {', '.join(GROUPS)}"),
    "label": (_count, "an integer >= 0"),
}


def check_table(path, table: dict) -> None:
    """Every value of the manifest's known columns has its type (a null, a string count or a path
    outside the shard directory is named here, with its row, not met as a traceback later)."""
    for column, (ok, allowed) in COLUMN_RULES.items():
        for row, v in enumerate(table.get(column, ())):
            if not ok(v):
                raise DataError(f"{path}: row {row} of column '{column}' is {v!r}; it must be {allowed}")
    paths = table.get("path", [])
    if len(set(paths)) != len(paths):
        dup = next(p for i, p in enumerate(paths) if p in paths[:i])
        raise DataError(f"{path}: shard {dup!r} is listed more than once")


# ---- helpers for the shard builder (shards/) and `verify` ----------------------------------------

SPLIT_NAME_CHARS = "letters, digits and '_'"


def is_valid_split_name(split: str) -> bool:
    """Split names become file-name prefixes `{split}-NNNNNN.tar`; keep them unambiguous."""
    return bool(split) and all(c.isascii() and (c.isalnum() or c == "_") for c in split)


def shard_index(split: str, file_name: str) -> int | None:
    """The index N of `{split}-NNNNNN.tar`, or None when the name is not one of this split's shards."""
    prefix, suffix = f"{split}-", ".tar"
    if not (file_name.startswith(prefix) and file_name.endswith(suffix)):
        return None
    digits = file_name[len(prefix) : -len(suffix)]
    return int(digits) if len(digits) == 6 and digits.isdigit() else None


def record_path(root: str | os.PathLike, shard_file_name: str) -> Path:
    """Per-shard record (JSON: sha256, bytes, samples, inputs fingerprint) that makes builds resumable."""
    return Path(root) / f"{shard_file_name}.record.json"


def splits_in(root: str | os.PathLike) -> list[str]:
    """Splits that have a shard manifest in `root`, sorted."""
    suffix = "-shards.parquet"
    return sorted(p.name[: -len(suffix)] for p in Path(root).glob(f"*{suffix}"))
