"""CIFAR-100 from the standard python-version archive (cifar-100-python.tar.gz), with LIFT's long-tail
subsampling of the train split: n_c = int(500 * (1/rho) ** (c / 99)) images of class c, chosen as LIFT
does (np.random.seed(0); per class in ascending order, shuffle that class's indices and keep the first
n_c), reproduced with a local RandomState(0). The test split is the full balanced test set.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from lift_dist.errors import ConfigError, DataError
from lift_dist.metrics import cifar100_lt_counts
from lift_dist.shards.index import ClassTable, Item, SourceIndex, TrainClasses, check_same_classes, json_bytes

MEMBERS = {"train": "train", "test": "test", "meta": "meta"}
IMG_MAX = 500
NUM_CLASSES = 100


class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR pickles hold dicts of lists/bytes/numpy arrays. Only those types may be built: a
    tampered archive cannot run code (the one place this project reads pickles)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_member(tar: tarfile.TarFile, archive: Path, name: str) -> dict:
    member = next((m for m in tar.getmembers() if m.isfile() and Path(m.name).name == name), None)
    if member is None:
        raise DataError(f"{archive} has no '{name}' file (expected the python version, cifar-100-python.tar.gz)")
    try:
        return _ArrayUnpickler(io.BytesIO(tar.extractfile(member).read()), encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{archive}: '{member.name}' cannot be read as a CIFAR pickle ({e})") from None


def _arrays(archive: Path, split: str, meta, part) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names, uint8 pixels and integer labels, each checked for its type (not converted by force:
    float labels would be truncated, out-of-range pixels wrapped)."""
    for what, d in (("meta", meta), (split, part)):
        if not isinstance(d, dict):
            raise DataError(f"{archive}: its '{what}' pickle is a {type(d).__name__}, not the CIFAR dict")
    try:
        raw_names, raw_data, raw_targets = meta[b"fine_label_names"], part[b"data"], part[b"fine_labels"]
    except KeyError as e:
        raise DataError(f"{archive}: CIFAR pickle lacks {e.args[0]!r}") from None
    if not isinstance(raw_names, list | tuple) or not all(isinstance(n, bytes | str) for n in raw_names):
        raise DataError(f"{archive}: 'fine_label_names' must be a list of names")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw_names]
    data, targets = np.asarray(raw_data), np.asarray(raw_targets)
    if data.dtype != np.uint8 and not (data.dtype.kind in "iu" and (data.size == 0 or 0 <= data.min() <= data.max() <= 255)):
        raise DataError(f"{archive}: '{split}' data must be pixels 0..255 (uint8), not {data.dtype}"
                        + (f" values {data.min()}..{data.max()}" if data.dtype.kind in "iu" else ""))
    if targets.dtype.kind not in "iu" or targets.ndim != 1:
        raise DataError(f"{archive}: '{split}' fine_labels must be a list of integers (got {targets.dtype}, shape {targets.shape})")
    return names, data.astype(np.uint8, copy=False), targets.astype(np.int64)


def long_tail_counts(imbalance: float, img_max: int = IMG_MAX, num_classes: int = NUM_CLASSES) -> list[int]:
    return cifar100_lt_counts(imbalance, img_max, num_classes)


def long_tail_indices(targets: np.ndarray, imbalance: float, names: list[str] | None = None) -> np.ndarray:
    """Indices kept for CIFAR-100-LT, in LIFT's order (class by class). A class with fewer images than
    its long-tail count would silently flatten the profile (10 per class asked for ratio 100 gives 2):
    that is an error naming the class."""
    rng = np.random.RandomState(0)  # = LIFT's np.random.seed(0), without touching the global RNG
    keep = []
    classes = np.unique(targets)
    for c, n_c in zip(classes, long_tail_counts(imbalance, num_classes=len(classes))):
        idx = np.where(targets == c)[0]
        if len(idx) < n_c:
            name = names[int(c)] if names else str(int(c))
            raise DataError(f"CIFAR-100-LT with imbalance ratio {imbalance:g} takes {n_c} training images of class {int(c)} "
                            f"('{name}') but the archive has {len(idx)}: use the complete cifar-100-python.tar.gz "
                            f"({IMG_MAX} per class), or --balanced to keep the archive as it is")
        rng.shuffle(idx)
        keep.append(idx[:n_c])
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)


def index_cifar100(archive: str | os.PathLike, split: str, *, imbalance: float | None = 100.0,
                   train: TrainClasses | None = None) -> SourceIndex:
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"CIFAR-100 archive {archive} does not exist")
    if split not in ("train", "test"):
        raise ConfigError(f"CIFAR-100 has the splits 'train' and 'test', not '{split}'")
    if imbalance is not None and not imbalance >= 1:
        raise ConfigError(f"imbalance ratio must be >= 1 (got {imbalance})")
    try:
        with tarfile.open(archive, "r:*") as tar:
            meta = _load_member(tar, archive, MEMBERS["meta"])
            part = _load_member(tar, archive, MEMBERS[split])
    except tarfile.TarError as e:
        raise DataError(f"{archive} is not a readable tar archive ({e})") from None
    names, data, targets = _arrays(archive, split, meta, part)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(targets):
        raise DataError(f"{archive}: '{split}' data has shape {data.shape}, expected (N, 3072) with N = {len(targets)} labels")
    if len(targets) and not (0 <= targets.min() and targets.max() < len(names)):
        raise DataError(f"{archive}: '{split}' labels fall outside 0..{len(names) - 1}")
    if train is not None:
        check_same_classes(names, train, f"{archive.name} (fine labels)")
    keep = long_tail_indices(targets, imbalance, names) if split == "train" and imbalance is not None else np.arange(len(targets))
    images = data.reshape(-1, 3, 32, 32)  # planar R, G, B rows

    def make_item(k: int) -> Item:
        i = int(keep[k])
        rgb = np.ascontiguousarray(images[i].transpose(1, 2, 0)).tobytes()
        meta_json = {"image_id": i, "file_name": f"{split}[{i}]", "category_id": int(targets[i])}
        return Item(f"{i:08d}", f"{archive.name} {split}[{i}]", "rgb", (32, 32, rgb), int(targets[i]), json_bytes(meta_json))

    extra = {"label_scheme": "cifar_fine"}
    if split == "train":
        extra["long_tail_imbalance"] = imbalance
    return SourceIndex(
        kind="cifar100",
        description={"kind": "cifar100", "archive": str(archive.resolve()), "imbalance": imbalance if split == "train" else None},
        classes=ClassTable(names),
        labels=targets[keep],
        make_item=make_item,
        summary_extra=extra,
    )
