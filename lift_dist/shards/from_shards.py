"""A shard split as a source: its samples re-sharded through the builder (the sweep's hold-out split).

Indexing reads each tar's member table once (names, offsets, sizes) and the small `cls` / `json`
entries; the image bytes are read at their offsets only when their new shard is written, and with
`resize=None` an upright RGB JPEG is copied as it is, byte for byte.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lift_dist.data.manifest import IMAGE_KEYS, read_manifest
from lift_dist.errors import DataError
from lift_dist.shards.index import ClassTable, Item, SourceIndex, TrainClasses, check_same_classes


def shard_members(path: Path) -> list[dict]:
    """Per sample of a tar: key, label, meta (json bytes) and (offset, size) of its image entry."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path) as tar, open(path, "rb") as raw:
            for m in tar:
                if not m.isfile() or "." not in m.name:
                    continue
                key, ext = m.name.split(".", 1)
                s = samples.setdefault(key, {"key": key})
                if ext in IMAGE_KEYS:
                    s["image"] = (m.offset_data, m.size)
                elif ext in ("cls", "json"):
                    raw.seek(m.offset_data)
                    s[ext] = raw.read(m.size)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"shard {path} cannot be read ({type(e).__name__}: {e})") from None
    bad = next((k for k, s in samples.items() if not {"image", "cls"} <= set(s)), None)
    if bad is not None:
        raise DataError(f"shard {path}: sample '{bad}' lacks an image or a 'cls' entry")
    return list(samples.values())


def sample_label(sample: dict, shard, num_classes: int) -> int:
    """The label a shard sample's `cls` entry gives (ASCII digits, 0..C-1), or a DataError naming the sample."""
    raw = sample.get("cls")
    text = raw.decode("ascii", "replace").strip() if isinstance(raw, bytes) else ""
    if not (text.isascii() and text.isdigit()) or int(text) >= num_classes:
        raise DataError(f"sample '{sample['key']}' in {shard}: cls {raw!r} is not a label 0..{num_classes - 1}")
    return int(text)


def index_shards(root: str | Path, split: str, keep: Callable[[str, int], bool], train: TrainClasses | None) -> SourceIndex:
    """The samples of `root/{split}` for which keep(key, label) holds, with the split's class table."""
    m = read_manifest(root, split)
    names = list(m.class_names)
    if train is not None:
        check_same_classes(names, train, f"{root} '{split}'")
    items, labels = [], []
    for shard in m.shard_files:
        for s in shard_members(shard):
            label = sample_label(s, shard, len(names))
            if keep(s["key"], label):
                offset, size = s["image"]
                items.append(Item(s["key"], f"sample '{s['key']}' in {shard}", "member", (str(shard), offset, size), label,
                                  s.get("json", b"{}")))
                labels.append(label)
    return SourceIndex(kind="shards", description={"kind": "shards", "root": str(Path(root).resolve()), "split": split},
                       classes=ClassTable(names), labels=np.asarray(labels, dtype=np.int64), make_item=items.__getitem__,
                       summary_extra={"label_scheme": m.summary.get("label_scheme", "shards")})
