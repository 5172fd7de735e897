"""An image-folder tree: ROOT/<class>/<image>, classes = the sorted top-level folder names."""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

from lift_dist.errors import DataError
from lift_dist.shards.index import (
    BadItem,
    ClassTable,
    Item,
    SourceIndex,
    StringTable,
    TrainClasses,
    json_bytes,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


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
