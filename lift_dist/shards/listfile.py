"""A LIFT list file (`<relative path> <label>` per line: ImageNet-LT, Places-LT, iNaturalist lists) with
a class-names file (`classnames.txt` or an iNaturalist categories.json)."""

from __future__ import annotations

import os
import re
from array import array
from pathlib import Path

import numpy as np

from lift_dist.errors import DataError
from lift_dist.shards.inat2018 import read_categories, taxonomy_classes
from lift_dist.shards.index import (
    BadItem,
    ClassTable,
    Item,
    SourceIndex,
    StringTable,
    TrainClasses,
    check_same_classes,
    json_bytes,
    unsafe_path_reason,
)

LABEL = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also takes '²' and '١'


def utf8_lines(path: Path, what: str) -> list[str]:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8").split("\n")  # not splitlines(): it also breaks at \\x1c, \\u2028, ...
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{what} {path} line {line} is not UTF-8 text (byte {data[e.start]:#04x}); save it as UTF-8") from None


def read_class_names(path: str | os.PathLike) -> ClassTable:
    """`classnames.txt` (`<folder-or-wnid> <name words...>` per line; the name is everything after the
    first token, underscores kept) or an iNaturalist `categories.json` (names + taxonomy by id)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class names file {path} does not exist")
    if path.suffix == ".json":
        return taxonomy_classes(read_categories(path), "species", "original")
    folders, names = [], []
    for line in utf8_lines(path, "class names file"):
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
    for lineno, line in enumerate(utf8_lines(list_file, "list file"), 1):
        text = line.strip()
        if not text:
            continue
        parts = text.rsplit(None, 1)
        where = f"{list_file.name}:{lineno}"
        if len(parts) != 2 or not LABEL.fullmatch(parts[1]):
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
