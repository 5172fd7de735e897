"""Fake inputs in the real formats, for tests and benchmarks: photo-like JPEGs, an iNaturalist-2018
release tree, a 437k-entry annotation file, and a cifar-100-python.tar.gz archive."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Natural-looking texture: smooth multi-octave noise in correlated colours plus sensor noise.
    (Flat colours decode several times faster than photos and would flatter a throughput figure.)"""
    img = np.zeros((height, width, 3), np.float32)
    for octave in range(1, 7):
        cells = 2 ** octave
        small = rng.random((cells + 1, cells + 1, 3)).astype(np.float32)
        layer = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC),
                           np.float32) / 255
        img += layer / octave
    img = img / img.max() * 200
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def photo_jpegs(count: int, width: int = 800, height: int = 600, seed: int = 0, quality: int = 90) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        photo_like(width, height, rng).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def tiny_jpegs(count: int = 16, size: int = 8, seed: int = 0) -> list[bytes]:
    """A few distinct small JPEGs to copy into many files quickly."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def inat_file_name(cat: dict, image_id: int) -> str:
    digest = hashlib.md5(str(image_id).encode()).hexdigest()
    return f"train_val2018/{cat.get('supercategory', 'Unknown')}/{cat['id']}/{digest}.jpg"


def write_inat2018(root: str | os.PathLike, categories: list[dict], train: dict[int, int], val: dict[int, int],
                   image_bytes: list[bytes] | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """An iNat-2018-format release in `root`: categories.json, train2018.json, val2018.json and the images
    they name. `train`/`val` map category id -> number of images. Returns the image records per split."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "categories.json").write_text(json.dumps(categories))
    image_bytes = image_bytes or tiny_jpegs(8, 16, seed)
    by_id = {c["id"]: c for c in categories}
    next_id, records = 1000, {}
    for split, per_cat in (("train", train), ("val", val)):
        images, anns = [], []
        for cid, n in sorted(per_cat.items()):
            for _ in range(n):
                name = inat_file_name(by_id[cid], next_id)
                path = root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(image_bytes[next_id % len(image_bytes)])
                images.append({"id": next_id, "file_name": name, "width": 16, "height": 16, "license": 1, "rights_holder": "x"})
                anns.append({"id": next_id, "image_id": next_id, "category_id": cid})
                next_id += 1
        coco = {"info": {"year": 2018}, "images": images, "annotations": anns,
                "categories": [{"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory")} for c in categories],
                "licenses": [{"id": 1, "name": "x"}]}
        (root / f"{split}2018.json").write_text(json.dumps(coco))
        records[split] = images
    return records


def write_inat_annotations(path: str | os.PathLike, num_images: int, num_categories: int = 8142, seed: int = 0) -> None:
    """An annotation file in the train2018.json layout with `num_images` images (one annotation each),
    streamed to disk (437,513 images ~ 100 MB of JSON)."""
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, num_categories, num_images)
    with open(path, "w") as f:
        f.write('{"info": {"year": 2018, "version": "1.0"}, "images": [')
        for i in range(num_images):
            digest = hashlib.md5(str(i).encode()).hexdigest()
            f.write(("," if i else "") + json.dumps({"license": 1, "file_name": f"train_val2018/Plantae/{cats[i]}/{digest}.jpg",
                                                      "rights_holder": "someone", "height": 600, "width": 800, "id": i}))
        f.write('], "annotations": [')
        for i in range(num_images):
            f.write(("," if i else "") + json.dumps({"id": i, "image_id": i, "category_id": int(cats[i])}))
        f.write('], "categories": [')
        f.write(",".join(json.dumps({"id": c, "name": f"species {c}", "supercategory": "Plantae"}) for c in range(num_categories)))
        f.write('], "licenses": [{"id": 1, "name": "cc"}]}')


def write_cifar100(path: str | os.PathLike, train_per_class: int = 500, test_per_class: int = 100, seed: int = 0) -> Path:
    """A cifar-100-python.tar.gz in the standard format (pickled dicts with bytes keys: b'data' as
    (N, 3072) uint8 planar RGB, b'fine_labels'; meta with b'fine_label_names'). Image i of class c is a
    smooth gradient + a little noise, cheap to compress."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    names = [f"class_{c:02d}".encode() for c in range(100)]
    base = np.linspace(0, 255, 1024, dtype=np.float32)

    def part(per_class: int, order_seed: int) -> dict:
        labels = np.repeat(np.arange(100), per_class)
        np.random.default_rng(order_seed).shuffle(labels)  # real CIFAR interleaves classes
        planes = np.empty((len(labels), 3, 1024), np.uint8)
        for ch in range(3):
            planes[:, ch] = (base[None, :] * ((labels[:, None] * (ch + 3)) % 7 + 1) / 7).astype(np.uint8)
        planes[:, 0, :16] = rng.integers(0, 256, (len(labels), 16), dtype=np.uint8)
        return {b"filenames": [f"{i}.png".encode() for i in range(len(labels))], b"batch_label": b"x",
                b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(),
                b"data": planes.reshape(len(labels), 3072)}

    members = {"train": part(train_per_class, 1), "test": part(test_per_class, 2),
               "meta": {b"fine_label_names": names, b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}}
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
