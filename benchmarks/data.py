"""Data pipeline speed: decode + train transform, images/s per worker, lift-dist shards vs a plain
folder-of-JPEGs PyTorch loader (ImageFolder + PIL, the same transform) on the same full-size
photo-like images (iNat-like: 800 x 600, natural texture + noise).

The shards are built as `shards/build.py` builds them by default (shorter side resized to 256 at
build time: 800 px JPEGs are decoded once, at build time), and the workers ship uint8 tensors that
are normalised per batch, as in training (that step is included in the timing).

    python benchmarks/data.py                     # 256 images, 1 worker each
    python benchmarks/data.py --images 512 --workers 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lift_dist.data.manifest import read_manifest  # noqa: E402
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, make_loader, rebatch  # noqa: E402
from lift_dist.shards import build_image_folder  # noqa: E402
from lift_dist.shards.synthetic import photo_jpegs  # noqa: E402
from lift_dist.transforms import lift_train_transform, normalize_uint8, uint8_output  # noqa: E402


def make_images(root: Path, n: int, classes: int, seed: int) -> None:
    for i, data in enumerate(photo_jpegs(n, 800, 600, seed=seed)):
        d = root / f"c{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.jpg").write_bytes(data)


def time_folder(root: Path, workers: int, batch: int, res: int) -> float:
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root), transform=lift_train_transform(res))
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=False)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    return n / (time.perf_counter() - t0)


def time_shards(shards: Path, workers: int, batch: int, res: int, draft: bool = True, tensor: bool = True) -> float:
    m = read_manifest(shards, "train")
    stream = ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), uint8_output(lift_train_transform(res)),
                         train=True, num_classes=m.num_classes, shuffle_buffer=500,
                         decode_min_side=res * 8 // 7 if draft else None, decode_to_tensor=tensor)  # as the trainer does
    loader = make_loader(stream, workers)
    t0 = time.perf_counter()
    n = sum(len(normalize_uint8(x)) for x, _, _ in rebatch(iter(loader), batch))  # the trainer's per-batch step included
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--repeats", type=int, default=2, help="best of N timed passes for each loader")
    p.add_argument("--no-resize", action="store_true", help="shards keep the original 800 px JPEGs")
    p.add_argument("--no-draft", action="store_true", help="decode at full size (no JPEG draft mode)")
    p.add_argument("--pil-decode", action="store_true",
                   help="also time the shards through PIL images (decode, crop, resize) instead of uint8 tensors")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "img", a.images, a.classes, seed=0)
        build_image_folder(tmp / "img", tmp / "shards", "train", shard_size=max(1, a.images // (4 * a.workers)),
                           workers=1, progress=False, resize=None if a.no_resize else 256)
        time_folder(tmp / "img", a.workers, a.batch, a.res)  # warm the page cache for both
        folder = max(time_folder(tmp / "img", a.workers, a.batch, a.res) for _ in range(a.repeats))
        shards, pil = 0.0, 0.0
        for _ in range(a.repeats):  # interleaved, so both see the same machine load
            shards = max(shards, time_shards(tmp / "shards", a.workers, a.batch, a.res, not a.no_draft))
            if a.pil_decode:
                pil = max(pil, time_shards(tmp / "shards", a.workers, a.batch, a.res, not a.no_draft, tensor=False))
    out = {"images": a.images, "workers": a.workers, "source": "800x600 photo-like JPEG", "transform": f"LIFT train, {a.res} px",
           "shards_resized_at_build": not a.no_resize, "jpeg_draft": not a.no_draft,
           "folder_images_per_s_per_worker": folder / a.workers, "shards_images_per_s_per_worker": shards / a.workers,
           "speedup": shards / folder}
    if a.pil_decode:
        out |= {"shards_pil_images_per_s_per_worker": pil / a.workers, "tensor_over_pil": shards / pil}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"decode + train transform, {a.images} images of 800x600, {a.workers} worker(s)")
    print(f"  folder of JPEGs (ImageFolder + PIL): {out['folder_images_per_s_per_worker']:7.1f} img/s per worker")
    kind = ("resized at build" if not a.no_resize else "original bytes") + (", draft" if not a.no_draft else "")
    print(f"  lift-dist shards ({kind}): {out['shards_images_per_s_per_worker']:7.1f} img/s per worker")
    if a.pil_decode:
        print(f"  lift-dist shards, PIL images instead of uint8 tensors: {out['shards_pil_images_per_s_per_worker']:7.1f} img/s per worker "
              f"(tensors {out['tensor_over_pil']:.2f}x)")
    print(f"  speed-up: {out['speedup']:.2f}x")


if __name__ == "__main__":
    main()
