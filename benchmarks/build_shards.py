"""Shard-building speed and memory: images/s per worker count from 800 px photo-like JPEGs, the cost
of each stage for one image, and peak RSS while parsing a 437,513-image iNat-2018 annotation file.

    python benchmarks/build_shards.py                        # 480 images, workers 1 and 2, parse 437,513
    python benchmarks/build_shards.py --images 2000 --workers 1,2,4,8 --json
    python benchmarks/build_shards.py --skip-parse --compare-json-load

The test photos are smooth multi-octave noise + sensor noise, not flat colours (those decode several
times faster than real photos and would flatter the figure).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_dist.shards import build_image_folder  # noqa: E402
from lift_dist.shards.images import encode_bytes  # noqa: E402
from lift_dist.shards.synthetic import photo_jpegs, write_inat_annotations  # noqa: E402

PEAK_RSS = """
import json, sys, time
def peak_kb():  # VmHWM: ru_maxrss would include the parent's peak (kept across fork + exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
base = peak_kb()
t = time.perf_counter()
if sys.argv[1] == "stream":
    from lift_dist.shards.inat import index_inat2018
    base = peak_kb()
    t = time.perf_counter()
    idx = index_inat2018(sys.argv[2], "train", annotations=sys.argv[3], categories=sys.argv[4] or None)
    n = idx.n
else:
    d = json.load(open(sys.argv[3]))
    n = len(d["images"])
print(json.dumps({"images": n, "seconds": time.perf_counter() - t, "base_mib": base / 1024, "peak_mib": peak_kb() / 1024}))
"""


def stage_costs(jpegs: list[bytes], resize: int, quality: int) -> dict:
    """Milliseconds per image for each stage, one process."""
    from PIL import Image

    def ms(fn) -> float:
        t = time.perf_counter()
        for data in jpegs:
            fn(data)
        return 1000 * (time.perf_counter() - t) / len(jpegs)

    def full_decode(data):
        Image.open(io.BytesIO(data)).load()

    def draft_decode(data):
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (resize, resize))
        img.load()

    decoded = []
    for data in jpegs:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (resize, resize))
        decoded.append(img.convert("RGB"))
    from lift_dist.shards.images import resize_shorter

    t = time.perf_counter()
    small = [resize_shorter(img, resize) for img in decoded]
    resize_ms = 1000 * (time.perf_counter() - t) / len(decoded)
    t = time.perf_counter()
    for img in small:
        img.save(io.BytesIO(), "JPEG", quality=quality)
    encode_ms = 1000 * (time.perf_counter() - t) / len(small)
    return {"decode_full_ms": ms(full_decode), "decode_draft_ms": ms(draft_decode), "resize_ms": resize_ms,
            "encode_ms": encode_ms, "pipeline_ms": ms(lambda d: encode_bytes(d, resize, quality))}


def throughput(root: Path, images: int, workers: list[int], resize: int, shard_size: int) -> list[dict]:
    import webdataset  # noqa: F401  (the import, ~4 s with torch, is not building time)

    rows = []
    for w in workers:
        with tempfile.TemporaryDirectory(prefix="bench-shards-") as out:
            t = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # the builder's summary line; stdout may carry --json
                build_image_folder(root, out, "train", resize=resize, shard_size=shard_size, workers=w, progress=False)
            dt = time.perf_counter() - t
            size = sum(p.stat().st_size for p in Path(out).glob("*.tar"))
        rows.append({"workers": w, "images": images, "seconds": dt, "images_per_s": images / dt,
                     "images_per_s_per_worker": images / dt / w, "shard_mib": size / 2**20})
    return rows


def parse_memory(n: int, compare_json_load: bool) -> dict:
    cats = REPO.parent / "shared" / "data" / "inat2018" / "categories.json"
    with tempfile.TemporaryDirectory(prefix="bench-inat-") as tmp:
        ann = Path(tmp) / "train2018.json"
        t = time.perf_counter()
        write_inat_annotations(ann, n)
        res = {"annotation_images": n, "annotation_file_mib": ann.stat().st_size / 2**20,
               "generate_seconds": time.perf_counter() - t}
        modes = ["stream"] + (["json.load"] if compare_json_load else [])
        for mode in modes:
            r = subprocess.run([sys.executable, "-c", PEAK_RSS, mode, tmp, str(ann), str(cats) if cats.is_file() else ""],
                               cwd=REPO, capture_output=True, text=True, check=True)
            res[mode] = json.loads(r.stdout)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480, help="images per throughput run (copies of --distinct photos)")
    p.add_argument("--distinct", type=int, default=48)
    p.add_argument("--size", default="800x600", help="photo size WxH (default 800x600)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--shard-size", type=int, default=40)
    p.add_argument("--annotations", type=int, default=437_513, help="images in the parse benchmark's annotation file")
    p.add_argument("--skip-parse", action="store_true")
    p.add_argument("--compare-json-load", action="store_true", help="also measure plain json.load on the same file")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    width, height = (int(v) for v in a.size.lower().split("x"))
    report = {"host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}}
    jpegs = photo_jpegs(a.distinct, width, height, seed=0)
    report["photo"] = {"size": [width, height], "mean_jpeg_kib": sum(map(len, jpegs)) / len(jpegs) / 1024}
    report["stages"] = stage_costs(jpegs, a.resize, a.quality)
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as tmp:
        root = Path(tmp)
        for i in range(a.images):
            d = root / f"class_{i % 8}"
            d.mkdir(exist_ok=True)
            (d / f"{i:06d}.jpg").write_bytes(jpegs[i % len(jpegs)])
        report["throughput"] = throughput(root, a.images, [int(w) for w in a.workers.split(",")], a.resize, a.shard_size)
    if not a.skip_parse:
        report["parse"] = parse_memory(a.annotations, a.compare_json_load)
    if a.json:
        print(json.dumps(report, indent=2))
        return
    st = report["stages"]
    print(f"photos {width}x{height}, mean {report['photo']['mean_jpeg_kib']:.0f} KiB; per image (1 process): "
          f"decode full {st['decode_full_ms']:.1f} ms, draft {st['decode_draft_ms']:.1f} ms, resize {st['resize_ms']:.1f} ms, "
          f"encode {st['encode_ms']:.1f} ms, whole encode_bytes {st['pipeline_ms']:.1f} ms")
    for r in report["throughput"]:
        print(f"workers {r['workers']}: {r['images_per_s']:.0f} images/s ({r['images_per_s_per_worker']:.0f} per worker), "
              f"{r['images']} images in {r['seconds']:.2f} s")
    if "parse" in report:
        pr = report["parse"]
        print(f"parse {pr['annotation_images']:,}-image annotation file ({pr['annotation_file_mib']:.0f} MiB): ")
        for mode in ("stream", "json.load"):
            if mode in pr:
                m = pr[mode]
                print(f"  {mode:9s} peak RSS {m['peak_mib']:.0f} MiB (interpreter + imports {m['base_mib']:.0f} MiB), {m['seconds']:.1f} s")


if __name__ == "__main__":
    main()
