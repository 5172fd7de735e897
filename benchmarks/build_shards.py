"""Shard-building speed and memory: images/s per worker count from 800 px photo-like JPEGs, the cost
of each stage for one image, and peak RSS while parsing a 437,513-image iNat-2018 annotation file.

    python benchmarks/build_shards.py                        # 960 images, workers 1 and 2, parse 437,513
    python benchmarks/build_shards.py --images 2000 --workers 1,2,4,8 --json
    python benchmarks/build_shards.py --skip-parse --baseline 125b253   # the same builds by an older commit
    python benchmarks/build_shards.py --skip-parse --compare-json-load

Every build runs in a fresh process (imports included, as for a user); with --baseline REF the same
builds of the same photos also run from a git worktree of REF, side by side, and the ratio is printed.

The test photos are smooth multi-octave noise + sensor noise, not flat colours (those decode several
times faster than real photos and would flatter the figure).
"""

from __future__ import annotations

import argparse
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

from baseline import worktree  # noqa: E402  (benchmarks/, the script's own folder)

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

    def turbo_draft_decode(data):  # what the build uses for RGB JPEGs
        decode_rgb_draft(data, Image.open(io.BytesIO(data)), (resize, resize))

    def entropy_floor(data):  # 1/8 scale: every coefficient entropy-decoded, almost no IDCT or colour work
        w, h = Image.open(io.BytesIO(data)).size
        simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // 8), min_width=-(-w // 8))

    decoded = []
    for data in jpegs:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (resize, resize))
        decoded.append(img.convert("RGB"))
    import simplejpeg
    import torch

    from lift_dist.data.jpeg import decode_rgb_draft
    from lift_dist.shards.images import encode_image, resize_shorter

    torch.set_num_threads(1)  # as in a build worker

    def each_ms(fn, items) -> float:
        t = time.perf_counter()
        for x in items:
            fn(x)
        return 1000 * (time.perf_counter() - t) / len(items)

    small = [resize_shorter(img, resize) for img in decoded]
    return {"decode_full_ms": ms(full_decode), "decode_draft_ms": ms(draft_decode),
            "decode_turbo_draft_ms": ms(turbo_draft_decode), "entropy_floor_ms": ms(entropy_floor),
            "pil_resize_ms": each_ms(lambda img: resize_shorter(img, resize), decoded),
            "pil_encode_ms": each_ms(lambda img: img.save(io.BytesIO(), "JPEG", quality=quality), small),
            "resize_and_encode_ms": each_ms(lambda img: encode_image(img, resize, quality), decoded),
            "pipeline_ms": ms(lambda d: encode_bytes(d, resize, quality))}


BUILD = """
import contextlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import webdataset  # the import (~4 s with torch) is not building time
from lift_dist.shards import build_image_folder
root, out, workers, resize, shard_size = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
t = time.perf_counter()
with contextlib.redirect_stdout(sys.stderr):
    build_image_folder(root, out, "train", resize=None if resize == "none" else int(resize), shard_size=shard_size,
                       workers=workers, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def build_seconds(repo: Path, root: Path, workers: int, resize: int | None, shard_size: int) -> tuple[float, float]:
    """(seconds, shard MiB) of one build in a fresh process running the code in `repo`."""
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as out:
        r = subprocess.run([sys.executable, "-c", BUILD, str(repo), str(root), out, str(workers), str(resize or "none"),
                            str(shard_size)], cwd=repo, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(repo)))
        if r.returncode:
            raise SystemExit(f"build in {repo} failed:\n{r.stderr[-2000:]}")
        size = sum(p.stat().st_size for p in Path(out).glob("*.tar"))
    return json.loads(r.stdout.strip().splitlines()[-1])["seconds"], size / 2**20


def throughput(root: Path, images: int, workers: list[int], resize: int, shard_size: int, baseline: Path | None,
               repeat: int) -> list[dict]:
    """The fastest of `repeat` builds per setting, the code versions alternating (a noisy host slows
    both alike rather than one)."""
    rows = []
    for w, rs in [(w, resize) for w in workers] + [(1, None)]:  # and --no-resize (the original bytes kept), one worker
        row = {"workers": w, "resize": rs, "images": images}
        repos = {name: repo for name, repo in (("now", REPO), ("baseline", baseline)) if repo is not None}
        runs = {name: [build_seconds(repo, root, w, rs, shard_size) for _ in range(1)] for name, repo in repos.items()}
        for _ in range(repeat - 1):
            for name, repo in repos.items():
                runs[name].append(build_seconds(repo, root, w, rs, shard_size))
        for name, results in runs.items():
            dt, mib = min(results)
            row[name] = {"seconds": dt, "images_per_s": images / dt, "images_per_s_per_worker": images / dt / w, "shard_mib": mib,
                         "all_seconds": [r[0] for r in results]}
        if baseline is not None:
            row["speedup"] = row["baseline"]["seconds"] / row["now"]["seconds"]
        rows.append(row)
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
    p.add_argument("--images", type=int, default=960, help="images per throughput run (copies of --distinct photos)")
    p.add_argument("--distinct", type=int, default=48)
    p.add_argument("--size", default="800x600", help="photo size WxH (default 800x600)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--shard-size", type=int, default=40)
    p.add_argument("--annotations", type=int, default=437_513, help="images in the parse benchmark's annotation file")
    p.add_argument("--skip-parse", action="store_true")
    p.add_argument("--compare-json-load", action="store_true", help="also measure plain json.load on the same file")
    p.add_argument("--repeat", type=int, default=3, help="builds per setting; the fastest is reported")
    p.add_argument("--baseline", metavar="REF", help="also run the builds with the code of this git commit, side by side")
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
        with worktree(a.baseline) as base:
            report["throughput"] = throughput(root, a.images, [int(w) for w in a.workers.split(",")], a.resize, a.shard_size, base,
                                              a.repeat)
        report["baseline"] = a.baseline
    if not a.skip_parse:
        report["parse"] = parse_memory(a.annotations, a.compare_json_load)
    if a.json:
        print(json.dumps(report, indent=2))
        return
    st = report["stages"]
    print(f"photos {width}x{height}, mean {report['photo']['mean_jpeg_kib']:.0f} KiB; per image (1 process, 1 thread): "
          f"decode full {st['decode_full_ms']:.2f} ms, PIL draft {st['decode_draft_ms']:.2f} ms, libjpeg-turbo draft "
          f"{st['decode_turbo_draft_ms']:.2f} ms (entropy decoding alone, at 1/8 scale: {st['entropy_floor_ms']:.2f} ms); "
          f"PIL resize {st['pil_resize_ms']:.2f} ms "
          f"+ encode {st['pil_encode_ms']:.2f} ms, encode_image (resize + encode) {st['resize_and_encode_ms']:.2f} ms; "
          f"whole encode_bytes {st['pipeline_ms']:.2f} ms")
    for r in report["throughput"]:
        what = f"resize {r['resize']}" if r["resize"] else "--no-resize"
        line = f"workers {r['workers']}, {what}: " + ", ".join(
            f"{name} {r[name]['images_per_s']:.0f} images/s ({r[name]['images_per_s_per_worker']:.0f} per worker)"
            for name in ("now", "baseline") if name in r)
        print(line + (f"; {r['speedup']:.2f}x {report['baseline']}" if "speedup" in r else "") + f" [{r['images']} images]")
    if "parse" in report:
        pr = report["parse"]
        print(f"parse {pr['annotation_images']:,}-image annotation file ({pr['annotation_file_mib']:.0f} MiB): ")
        for mode in ("stream", "json.load"):
            if mode in pr:
                m = pr[mode]
                print(f"  {mode:9s} peak RSS {m['peak_mib']:.0f} MiB (interpreter + imports {m['base_mib']:.0f} MiB), {m['seconds']:.1f} s")


if __name__ == "__main__":
    main()
