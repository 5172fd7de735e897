"""What every source yields: an index of items with labels, a class table, index-level problems; and
the train split's label map that val/test splits reuse. Sources: folder, listfile, inat2018, cifar100.

An index stays compact (numpy arrays and a packed string table), so a dataset of hundreds of thousands
of images costs tens of MB; the per-item records the writers need are built one shard at a time.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq

from lift_dist.data import manifest as mf
from lift_dist.errors import ConfigError, DataError


class Item(NamedTuple):
    """One sample as the shard writer needs it (picklable, built lazily per shard)."""

    key: str  # sample key in the tar: digits only (webdataset splits keys at the first dot)
    where: str  # how error messages name it: file path, list line, image id
    kind: str  # "file": payload is a path | "rgb": (width, height, raw RGB bytes) | "member": (tar, offset, size)
    payload: object
    label: int
    meta: bytes  # the sample's `json` entry


class BadItem(NamedTuple):
    item: str
    reason: str


class StringTable:
    """Many short strings packed in one bytes buffer + offsets (~3x smaller than a list of str)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ends = array("q")

    def append(self, s: str) -> None:
        self._buf += s.encode("utf-8")
        self._ends.append(len(self._buf))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        start = self._ends[i - 1] if i > 0 else 0
        return self._buf[start : self._ends[i]].decode("utf-8")

    def nbytes(self) -> int:
        return len(self._buf) + self._ends.itemsize * len(self._ends)


@dataclass
class ClassTable:
    """Label order = list order. `columns` are extra per-class columns (taxonomy, folder names)."""

    names: list[str]
    columns: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class TrainClasses:
    """The train split's label map and counts, which val/test splits must reuse."""

    directory: Path
    classes: ClassTable
    counts: np.ndarray
    summary: dict


@dataclass
class SourceIndex:
    """All good items of one split (labels[i] for item i) and what was wrong with the rest."""

    kind: str
    description: dict  # goes into the summary's `source`
    classes: ClassTable
    labels: np.ndarray  # int64 (n,)
    make_item: Callable[[int], Item]  # item i -> Item (called one shard at a time)
    bad: list[BadItem] = field(default_factory=list)
    summary_extra: dict = field(default_factory=dict)  # label_scheme, level, ...

    @property
    def n(self) -> int:
        return len(self.labels)


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def unsafe_path_reason(rel: str) -> str | None:
    """Why a relative image path from an annotation/list must not be opened, or None when it is fine.
    Annotation files are data, not code: they must not reach files outside the image root."""
    if not rel:
        return "empty file name"
    if "\x00" in rel:
        return "file name contains a NUL byte"
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return f"absolute path {rel!r} escapes the image root"
    parts = rel.replace("\\", "/").split("/")
    if ".." in parts:
        return f"path {rel!r} escapes the image root ('..')"
    return None


def load_train_classes(directory: Path, split: str) -> TrainClasses:
    """The train split's classes table; a clear error when it is not there yet."""
    path = mf.classes_path(directory, "train")
    if not path.is_file():
        raise ConfigError(
            f"the '{split}' split needs the train split's label map and counts, but {path} does not exist: "
            f"build the train split into {directory} first, or point --train-manifest at the directory that holds it"
        )
    table = pq.read_table(path).to_pydict()
    missing = [c for c in mf.CLASS_COLUMNS if c not in table]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}")
    extra = {k: v for k, v in table.items() if k not in mf.CLASS_COLUMNS and k != "split_count"}
    summary_file = mf.summary_path(directory, "train")
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return TrainClasses(
        directory=Path(directory),
        classes=ClassTable([str(n) for n in table["name"]], extra),
        counts=np.asarray(table["count"], dtype=np.int64),
        summary=summary,
    )


def check_same_classes(names: list[str], train: TrainClasses, what: str) -> None:
    if list(names) != list(train.classes.names):
        diff = next((i for i, (a, b) in enumerate(zip(names, train.classes.names)) if a != b), min(len(names), len(train.classes)))
        ours = names[diff] if diff < len(names) else "(none)"
        theirs = train.classes.names[diff] if diff < len(train.classes) else "(none)"
        raise ConfigError(
            f"{what} defines {len(names)} classes but the train split in {train.directory} has {len(train.classes)}; first "
            f"difference at label {diff}: {ours!r} vs {theirs!r} (same class names file / level / label scheme as for train?)")
