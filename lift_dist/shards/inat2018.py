"""The official iNaturalist 2018 release: {train,val}2018.json (COCO style) + categories.json (taxonomy).

Labels at a taxonomic level (species = the `name` field, or genus ... kingdom):
  official  rank of the category's value at that level among the sorted unique values over all
            categories (what the iNat 2018 loaders do with np.unique): alphabetical by scientific name.
  original  order of first appearance when walking categories by id (at species level: category id order).
The class table always covers every category in categories.json, so train and val share one map
(6 / 25 / 57 / 272 / 1118 / 4401 / 8142 classes from kingdom to species on the 2018 release).
"""

from __future__ import annotations

import json
import os
from array import array
from collections import Counter
from pathlib import Path

import ijson
import numpy as np
from ijson.common import ObjectBuilder

from lift_dist.errors import ConfigError, DataError, choices
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

LEVELS = ("species", "genus", "family", "order", "class", "phylum", "kingdom")
RANKS_TOP_DOWN = ("kingdom", "phylum", "class", "order", "family", "genus")
SCHEMES = ("official", "original")
SPLIT_FILES = {"train": "train2018.json", "val": "val2018.json"}


def _field(level: str) -> str:
    return "name" if level == "species" else level


def read_categories(path: str | os.PathLike) -> list[dict]:
    """categories.json: a list of {id, name, supercategory, kingdom, ..., genus}; sorted by id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"categories file {path} does not exist")
    try:
        cats = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if isinstance(cats, dict) and "categories" in cats:
        cats = cats["categories"]
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{path}: expected a non-empty list of categories")
    return checked_categories(cats, str(path), default_ids=True)


def checked_categories(cats: list, where: str, default_ids: bool = False) -> list[dict]:
    """Category records sorted by id; each needs an integer id (its position when `default_ids` and it has
    none) and a string name, and ids are unique."""
    out = []
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise DataError(f"{where}: category [{i}] lacks a 'name' string")
        cid = c.get("id", i if default_ids else None)
        if type(cid) is not int:
            raise DataError(f"{where}: category [{i}] ({c['name']!r}) has id {cid!r}; ids must be integers")
        out.append(dict(c, id=cid))
    out.sort(key=lambda c: c["id"])
    ids = [c["id"] for c in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x, n in Counter(ids).items() if n > 1)
        raise DataError(f"{where}: category ids are not unique (e.g. {dup})")
    return out


def taxonomy_classes(cats: list[dict], level: str, scheme: str) -> ClassTable:
    """Class table at `level` under `scheme` (see the module doc); columns: taxonomy above the level."""
    return label_map(cats, level, scheme)[1]


def label_map(cats: list[dict], level: str, scheme: str) -> tuple[np.ndarray, ClassTable]:
    """(label of each category in `cats` order, class table)."""
    if level not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; choose one of {choices(LEVELS)}")
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown label scheme {scheme!r}; choose one of {choices(SCHEMES)}")
    key = _field(level)
    missing = next((c for c in cats if key not in c), None)
    if missing is not None:
        raise ConfigError(f"level '{level}' needs the '{key}' field, which category {missing['id']} lacks "
                          "(pass the release's categories.json for taxonomy levels)")
    values = [str(c[key]) for c in cats]
    if scheme == "official":
        names = sorted(set(values))
    else:
        names = list(dict.fromkeys(values))  # first appearance in category-id order
    rank = {v: i for i, v in enumerate(names)}
    labels = np.array([rank[v] for v in values], dtype=np.int64)
    # Taxonomy columns: the ranks above the level (first category of each class, in id order).
    above = RANKS_TOP_DOWN[: RANKS_TOP_DOWN.index(level)] if level != "species" else RANKS_TOP_DOWN
    columns: dict[str, list] = {}
    first = {}
    for c, lab in zip(cats, labels):
        first.setdefault(int(lab), c)
    ordered = [first[i] for i in range(len(names))]
    for col in ("supercategory", *above):
        if all(col in c for c in cats):
            columns[col] = [str(c[col]) for c in ordered]
    if level == "species":
        columns["category_id"] = [int(c["id"]) for c in ordered]
    else:
        columns["num_species"] = np.bincount(labels, minlength=len(names)).tolist()
    return labels, ClassTable(names, columns)


class _Compact:
    """What the reader keeps from the annotation file: flat arrays, no per-image dicts."""

    def __init__(self, path: Path):
        self.path = path
        self.ids, self.widths, self.heights = array("q"), array("l"), array("l")
        self.names = StringTable()
        self.ann_image, self.ann_cat = array("q"), array("q")
        self.json_categories: list[dict] = []

    def _int(self, v, what: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(f"{self.path}: {what} must be an integer (got {v!r})")
        return v

    def _size(self, v, what: str) -> int:
        if v is None:
            return 0
        if isinstance(v, float) and v.is_integer() and v >= 0:
            return int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(f"{self.path}: {what} must be a whole number of pixels (got {v!r})")
        return v

    def image(self, el, i: int) -> None:
        if not isinstance(el, dict) or "id" not in el or "file_name" not in el:
            raise DataError(f"{self.path}: images[{i}] must be an object with 'id' and 'file_name'")
        self.ids.append(self._int(el["id"], f"images[{i}].id"))
        self.names.append(str(el["file_name"]))
        self.widths.append(self._size(el.get("width"), f"images[{i}].width"))
        self.heights.append(self._size(el.get("height"), f"images[{i}].height"))

    def annotation(self, el, i: int) -> None:
        if not isinstance(el, dict) or "image_id" not in el or "category_id" not in el:
            raise DataError(f"{self.path}: annotations[{i}] must be an object with 'image_id' and 'category_id'")
        self.ann_image.append(self._int(el["image_id"], f"annotations[{i}].image_id"))
        self.ann_cat.append(self._int(el["category_id"], f"annotations[{i}].category_id"))

    def category(self, el, i: int) -> None:
        if isinstance(el, dict):
            self.json_categories.append(el)


def walk_arrays(path: Path, handlers: dict) -> None:
    """Call handlers[key](element, index) for each element of the top-level arrays named in `handlers`,
    one element built at a time (ijson events): iNat's train2018.json would take several hundred MB as
    Python objects. Other members are skipped."""
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    items = {f"{k}.item": k for k in handlers}
    index = dict.fromkeys(handlers, 0)
    builder, where, top = None, None, None
    with open(path, "rb") as f:
        try:
            for prefix, event, value in ijson.parse(f, use_float=True):
                if top is None:
                    top = event
                    if event != "start_map":
                        raise DataError(f"{path}: the annotation file must hold a JSON object, not a {event.split('_')[-1]}")
                if builder is None and prefix in items and event not in ("end_map", "end_array"):
                    where = prefix
                    if event in ("start_map", "start_array"):
                        builder = ObjectBuilder()
                    else:  # a scalar element
                        _deliver(handlers, index, items[prefix], value)
                        continue
                if builder is not None:
                    builder.event(event, value)
                    if prefix == where and event in ("end_map", "end_array"):
                        _deliver(handlers, index, items[where], builder.value)
                        builder = None
                elif prefix in handlers and event in ("start_map", "string", "number", "boolean", "null"):
                    raise DataError(f"{path}: '{prefix}' must be an array")
        except ijson.JSONError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None


def _deliver(handlers: dict, index: dict, key: str, element) -> None:
    handlers[key](element, index[key])
    index[key] += 1


def _np(a: array, dtype) -> np.ndarray:
    return np.frombuffer(a, dtype=dtype).copy() if len(a) else np.zeros(0, dtype)


def index_inat2018(root: str | os.PathLike, split: str, *, annotations: str | os.PathLike | None = None,
                   categories: str | os.PathLike | None = None, level: str = "species", scheme: str = "official",
                   train: TrainClasses | None = None) -> SourceIndex:
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"iNaturalist root {root} does not exist")
    annotations = _annotation_file(root, split, annotations)
    cat_file = Path(categories) if categories is not None else root / "categories.json"

    c = _Compact(annotations)
    walk_arrays(annotations, {"images": c.image, "annotations": c.annotation, "categories": c.category})
    cats = _categories(c, cat_file, categories is not None, annotations, root, level)
    cat_labels, classes = label_map(cats, level, scheme)
    if train is not None:
        _check_train_classes(classes, train, cat_file, level, scheme)
    ids, names = _np(c.ids, np.int64), c.names
    widths, heights = _np(c.widths, np.int64), _np(c.heights, np.int64)
    ann_image, ann_cat = _np(c.ann_image, np.int64), _np(c.ann_cat, np.int64)
    del c
    cat_ids = np.array([x["id"] for x in cats], dtype=np.int64)  # sorted
    cat_name = cat_file.name if cat_file.is_file() else "categories"
    ok, cpos, bad = _check_images(ids, names, ann_image, ann_cat, cat_ids, annotations.name, cat_name)

    keep = np.flatnonzero(ok)
    cat_index = cpos[keep]
    labels = cat_labels[cat_index]
    taxonomy = [{**{r: str(x.get(r, "")) for r in RANKS_TOP_DOWN}, "species": str(x["name"]),
                 "supercategory": str(x.get("supercategory", ""))} for x in cats]

    def make_item(k: int) -> Item:
        i = int(keep[k])
        ci = int(cat_index[k])
        rel = names[i]
        meta = {"image_id": int(ids[i]), "file_name": rel, "category_id": int(cat_ids[ci]),
                "width": int(widths[i]), "height": int(heights[i]), "taxonomy": taxonomy[ci]}
        return Item(f"{int(ids[i]):09d}" if ids[i] >= 0 else f"n{-int(ids[i]):09d}", f"image {int(ids[i])} ({root / rel})",
                    "file", str(root / rel), int(labels[k]), json_bytes(meta))

    return SourceIndex(
        kind="inat2018",
        description={"kind": "inat2018", "root": str(root.resolve()), "annotations": str(annotations.resolve()),
                     "categories": str(cat_file.resolve()) if cat_file.is_file() else None},
        classes=classes,
        labels=labels,
        make_item=make_item,
        bad=bad,
        summary_extra={"label_scheme": scheme, "level": level},
    )


def _annotation_file(root: Path, split: str, annotations: str | os.PathLike | None) -> Path:
    if annotations is not None:
        return Path(annotations)
    if split not in SPLIT_FILES:
        known = ", ".join(f"{k}: {v}" for k, v in SPLIT_FILES.items())
        raise ConfigError(f"split '{split}' has no official annotation file ({known}); pass --annotations FILE")
    return root / SPLIT_FILES[split]


def _categories(c: _Compact, cat_file: Path, given: bool, annotations: Path, root: Path, level: str) -> list[dict]:
    """The category records, by id: from categories.json (the taxonomy), else the annotation file's own."""
    if cat_file.is_file():
        cats = read_categories(cat_file)
    elif given:
        raise DataError(f"categories file {cat_file} does not exist")
    elif c.json_categories:
        if level != "species":
            raise ConfigError(f"level '{level}' needs the taxonomy in categories.json, which is not in {root} (pass --categories FILE)")
        cats = checked_categories(c.json_categories, f"{annotations} 'categories'")
    else:
        raise DataError(f"no categories: {cat_file} does not exist and {annotations} has no 'categories'")
    c.json_categories = []
    return cats


def _check_train_classes(classes, train: TrainClasses, cat_file: Path, level: str, scheme: str) -> None:
    check_same_classes(classes.names, train, f"{cat_file.name} at level '{level}' ({scheme} labels)")
    for k, got in (("level", level), ("label_scheme", scheme)):
        if train.summary.get(k) not in (None, got):
            raise ConfigError(f"the train split in {train.directory} was built with {k} '{train.summary[k]}', not '{got}'")


def _check_images(ids: np.ndarray, names: list[str], ann_image: np.ndarray, ann_cat: np.ndarray, cat_ids: np.ndarray,
                  ann_name: str, cat_name: str) -> tuple[np.ndarray, np.ndarray, list[BadItem]]:
    """(usable images mask, each image's position in cat_ids, the bad items): duplicate ids, annotations
    of unknown images, images with no or several annotations, unknown categories, unsafe paths."""
    n = len(ids)
    bad: list[BadItem] = []
    ok = np.ones(n, dtype=bool)

    def image_name(i: int) -> str:
        return f"image {int(ids[i])} ({names[i]})"

    # Duplicate image ids: every copy is bad (which one an annotation means cannot be known).
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    dup_sorted = np.zeros(n, dtype=bool)
    if n > 1:
        same = sorted_ids[1:] == sorted_ids[:-1]
        dup_sorted[1:] |= same
        dup_sorted[:-1] |= same
    for i in np.sort(order[dup_sorted]):
        ok[i] = False
        bad.append(BadItem(image_name(i), f"duplicate image id {int(ids[i])} in {ann_name}"))

    # Annotations -> image positions; unknown image ids are bad annotations.
    pos = np.searchsorted(sorted_ids, ann_image)
    found = pos < n
    found[found] = sorted_ids[pos[found]] == ann_image[found]
    for j in np.flatnonzero(~found):
        bad.append(BadItem(f"annotations[{j}]", f"unknown image id {int(ann_image[j])} (not in 'images' of {ann_name})"))
    img_of_ann = np.where(found, order[np.minimum(pos, n - 1)] if n else 0, -1)
    per_image = np.bincount(img_of_ann[found], minlength=n) if n else np.zeros(0, np.int64)
    cat_of_image = np.full(n, -1, dtype=np.int64)
    cat_of_image[img_of_ann[found]] = ann_cat[found]

    # Category ids -> labels (category ids need not be 0..K-1).
    cpos = np.searchsorted(cat_ids, cat_of_image)
    known_cat = (cpos < len(cat_ids)) & (cat_of_image >= 0)
    known_cat[known_cat] = cat_ids[cpos[known_cat]] == cat_of_image[known_cat]

    for i in range(n):
        if not ok[i]:
            continue
        reason = unsafe_path_reason(names[i])
        if reason is None:
            if per_image[i] == 0:
                reason = f"no annotation in {ann_name}"
            elif per_image[i] > 1:
                reason = f"{int(per_image[i])} annotations (expected one label per image)"
            elif not known_cat[i]:
                reason = f"unknown category id {int(cat_of_image[i])} (not in {cat_name})"
        if reason is not None:
            ok[i] = False
            bad.append(BadItem(image_name(i), reason))
    return ok, cpos, bad
