"""What every source yields (an index of items with labels, a class table, index-level problems), plus
the two simple sources: an image-folder tree and a LIFT list file (`<relative path> <label>` per line).

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

from lift_dist.data import manifest as mf
from lift_dist.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


class Item(NamedTuple):
    """One sample as the shard writer needs it (picklable, built lazily per shard)."""

    key: str  # sample key in the tar: digits only (webdataset splits keys at the first dot)
    where: str  # how error messages name it: file path, list line, image id
    kind: str  # "file": payload is a path | "rgb": payload is (width, height, raw RGB bytes)
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
    import pyarrow.parquet as pq

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
        raise ConfigError(
            f"{what} defines {len(names)} classes but the train split in {train.directory} has {len(train.classes)}"
            f"; first difference at label {diff}: "
            f"{names[diff] if diff < len(names) else '(none)'!r} vs {train.classes.names[diff] if diff < len(train.classes) else '(none)'!r}"
            " (same class names file / level / label scheme as for train?)"
        )


# ---- image-folder tree: class = top-level folder, sorted -----------------------------------------

def index_image_folder(root: str | os.PathLike, train: TrainClasses | None) -> SourceIndex:
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if train is None:
        if not folders:
            raise DataError(f"{root} holds no class folders (expected {root}/<class name>/<image>)")
        names = folders
    else:
        names = list(train.classes.names)
    label_of = {n: i for i, n in enumerate(names)}
    paths, labels, bad = StringTable(), array("q"), []
    for folder in folders:
        files = []
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in filenames
                         if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        for f in sorted(files):
            rel = os.path.relpath(f, root)
            if folder not in label_of:
                bad.append(BadItem(rel, f"class folder '{folder}' is not one of the {len(names)} training classes"))
                continue
            paths.append(rel)
            labels.append(label_of[folder])

    def make_item(i: int) -> Item:
        rel = paths[i]
        label = int(labels[i])
        meta = {"image_id": rel, "file_name": rel, "category_id": names[label]}
        return Item(f"{i:08d}", str(root / rel), "file", str(root / rel), label, json_bytes(meta))

    return SourceIndex(
        kind="image_folder",
        description={"kind": "image_folder", "root": str(root.resolve())},
        classes=ClassTable(names, {"folder": list(names)}),
        labels=np.frombuffer(labels, dtype=np.int64) if len(labels) else np.zeros(0, np.int64),
        make_item=make_item,
        bad=bad,
        summary_extra={"label_scheme": "sorted_folders"},
    )


# ---- LIFT list files ----------------------------------------------------------------------------

def read_class_names(path: str | os.PathLike) -> ClassTable:
    """`classnames.txt` (`<folder-or-wnid> <name words...>` per line; the name is everything after the
    first token, underscores kept) or an iNaturalist `categories.json` (names + taxonomy by id)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class names file {path} does not exist")
    if path.suffix == ".json":
        from lift_dist.shards.inat import read_categories, taxonomy_classes

        return taxonomy_classes(read_categories(path), "species", "original")
    folders, names = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.strip().split(None, 1)
            if not parts:
                continue
            folders.append(parts[0])
            names.append(parts[1].strip() if len(parts) > 1 else parts[0])
    if not names:
        raise DataError(f"class names file {path} is empty")
    return ClassTable(names, {"folder": folders})


def index_list(list_file: str | os.PathLike, image_root: str | os.PathLike, class_names_file: str | os.PathLike,
               train: TrainClasses | None) -> SourceIndex:
    list_file, image_root = Path(list_file), Path(image_root).absolute()
    if not list_file.is_file():
        raise DataError(f"list file {list_file} does not exist")
    if not image_root.is_dir():
        raise DataError(f"image root {image_root} does not exist")
    classes = read_class_names(class_names_file)
    if train is not None:
        check_same_classes(classes.names, train, str(class_names_file))
    num_classes = len(classes)
    paths, labels, lines, bad = StringTable(), array("q"), array("q"), []
    first_line: dict[str, int] = {}
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(None, 1)
            where = f"{list_file.name}:{lineno}"
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                bad.append(BadItem(where, f"expected '<relative path> <integer label>', got {text[:80]!r}"))
                continue
            rel, label = parts[0], int(parts[1])
            reason = unsafe_path_reason(rel)
            if reason is None and not 0 <= label < num_classes:
                reason = f"unknown category: label {label} is outside 0..{num_classes - 1} of {Path(class_names_file).name}"
            if reason is None and rel in first_line:
                reason = f"duplicate image id: {rel} is already listed on line {first_line[rel]}"
            if reason is not None:
                bad.append(BadItem(f"{where} {rel}", reason))
                continue
            first_line[rel] = lineno
            paths.append(rel)
            labels.append(label)
            lines.append(lineno)
    del first_line

    def make_item(i: int) -> Item:
        rel = paths[i]
        label = int(labels[i])
        meta = {"image_id": rel, "file_name": rel, "category_id": label, "line": int(lines[i])}
        return Item(f"{int(lines[i]):08d}", f"{rel} ({list_file.name}:{lines[i]})", "file", str(image_root / rel), label,
                    json_bytes(meta))

    return SourceIndex(
        kind="list",
        description={"kind": "list", "list": str(list_file.resolve()), "image_root": str(image_root.resolve()),
                     "class_names": str(Path(class_names_file).resolve())},
        classes=classes,
        labels=np.frombuffer(labels, dtype=np.int64) if len(labels) else np.zeros(0, np.int64),
        make_item=make_item,
        bad=bad,
        summary_extra={"label_scheme": "list"},
    )
