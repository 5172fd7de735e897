"""Data pipeline speed: decode + LIFT train transform + batching, per loader worker, lift-dist shards
vs a plain folder-of-JPEGs PyTorch loader (ImageFolder + PIL + the same transform, default collate).

The images are photo-like (iNat-like: 800 x 600, natural texture + noise; flat synthetic images
decode several times faster and would hide the real cost), or a folder of your own (`--folder DIR`,
ImageFolder layout: one sub-folder per class). The shards are built from them as `shards/build.py`
builds by default (shorter side 256), and the stream runs as in training: uint8 tensors from the
workers, re-cut into batches and normalised per batch in the main process (included in the timing).

Both loaders keep their workers (persistent, as the trainer's do across epochs): one warm-up pass,
then `--passes` timed passes. Two figures per loader: images/s per worker (wall clock) and the loader
workers' CPU milliseconds per image (from /proc, robust to other load on the machine).

    python benchmarks/data.py                          # 512 photo-like images, 1 worker each
    python benchmarks/data.py --workers 2 --json
    python benchmarks/data.py --folder ~/photos/train --images 2000
    python benchmarks/data.py --baseline 8288845       # the shard stream of an older commit, side by side
    python benchmarks/data.py --profile                # cProfile of the stream in-process (workers=0)
    python benchmarks/data.py --exact                  # adds --no-resize shards: draft-decoded, and the exact-input mode (no draft)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from baseline import worktree  # noqa: E402  (benchmarks/, the script's own folder)
from torch.utils.data import DataLoader  # noqa: E402

from lift_dist.shards import build_image_folder  # noqa: E402
from lift_dist.shards.synthetic import photo_jpegs  # noqa: E402

CLOCK = os.sysconf("SC_CLK_TCK")

# The shard stream, run by the code of a given checkout (this one, or --baseline's worktree).
STREAM = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from lift_dist.data.manifest import read_manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, make_loader, rebatch
from lift_dist.transforms import lift_train_transform, normalize_uint8, uint8_output
shards, workers, batch, res, passes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
device = sys.argv[7]  # "" (decoded in the workers) or the device of data.decode_device=cuda's path
min_side = None if sys.argv[8] == "exact" else res * 8 // 7  # data.jpeg_draft=false: full-size decodes
m = read_manifest(shards, "train")
defer = {"defer_decode": True} if device else {}
stream = ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), uint8_output(lift_train_transform(res)),
                     train=True, num_classes=m.num_classes, shuffle_buffer=500, decode_min_side=min_side,
                     decode_to_tensor=True, **defer)  # as the trainer builds it
loader = make_loader(stream, workers)
try:  # the trainer's own batching, where the checkout has it (buffers reused)
    from lift_dist.data.pipeline import loader_batches
except ImportError:
    loader_batches = lambda loader, n: rebatch(iter(loader), n)  # noqa: E731
if device:
    from lift_dist.data.device_decode import DeviceDecoder
    decoder = DeviceDecoder(torch.device(device))
    batches = lambda: rebatch(decoder(iter(loader)), batch)  # noqa: E731
else:
    batches = lambda: loader_batches(loader, batch)  # noqa: E731
def one_pass():
    n = sum(len(normalize_uint8(x)) for x, _, _ in batches())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n
from data_timing import timed_passes
print(json.dumps(timed_passes(loader, one_pass, passes)))
"""

TIMING = '''
import os, time
CLOCK = os.sysconf("SC_CLK_TCK")

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK  # utime + stime

def worker_pids(loader):
    it = loader._iterator
    return [w.pid for w in it._workers] if it is not None and hasattr(it, "_workers") else []

def timed_passes(loader, one_pass, passes):
    """A warm-up pass, then `passes` timed ones: the best wall rate, and worker CPU ms per image."""
    t = time.perf_counter()
    n = one_pass()
    first = n / (time.perf_counter() - t)
    best, cpu = 0.0, []
    for _ in range(passes):
        pids = worker_pids(loader) or [os.getpid()]
        c0, t0 = sum(cpu_seconds(p) for p in pids), time.perf_counter()
        n = one_pass()
        dt, c1 = time.perf_counter() - t0, sum(cpu_seconds(p) for p in pids)
        best = max(best, n / dt)
        cpu.append(1000 * (c1 - c0) / n)
    return {"images": n, "first_pass_images_per_s": first, "images_per_s": best, "worker_cpu_ms_per_image": min(cpu)}
'''


def make_images(root: Path, n: int, classes: int, seed: int) -> None:
    for i, data in enumerate(photo_jpegs(n, 800, 600, seed=seed)):
        d = root / f"c{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.jpg").write_bytes(data)


def time_folder(root: Path, workers: int, batch: int, res: int, passes: int) -> dict:
    from data_timing import timed_passes
    from torchvision.datasets import ImageFolder

    from lift_dist.transforms import lift_train_transform

    ds = ImageFolder(str(root), transform=lift_train_transform(res))
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    return timed_passes(loader, lambda: sum(len(y) for _, y in loader), passes)


def time_shards(repo: Path, shards: Path, workers: int, batch: int, res: int, passes: int, timing_dir: Path,
                device: str = "", exact: bool = False) -> dict:
    """The shard stream in a fresh process running `repo`'s code (decoding on `device` in the main
    process when given: data.decode_device=cuda's path; `exact`: no draft decoding)."""
    r = subprocess.run([sys.executable, "-c", STREAM, str(repo), str(shards), str(workers), str(batch), str(res), str(passes),
                        device, "exact" if exact else "draft"],
                       capture_output=True, text=True, cwd=repo, env=dict(os.environ, PYTHONPATH=f"{repo}:{timing_dir}"))
    if r.returncode:
        raise SystemExit(f"the shard stream of {repo} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def profile_stream(shards: Path, batch: int, res: int) -> str:
    """Where a sample's time goes: cProfile of one in-process pass (workers=0), by own time."""
    from lift_dist.data.manifest import read_manifest
    from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, make_loader, rebatch
    from lift_dist.transforms import lift_train_transform, normalize_uint8, uint8_output

    m = read_manifest(shards, "train")
    stream = ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(),
                         uint8_output(lift_train_transform(res)), train=True, num_classes=m.num_classes, shuffle_buffer=500,
                         decode_min_side=res * 8 // 7, decode_to_tensor=True)
    prof = cProfile.Profile()
    prof.enable()
    n = sum(len(normalize_uint8(x)) for x, _, _ in rebatch(iter(make_loader(stream, 0)), batch))
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("tottime")
    total = stats.total_tt
    out.write(f"{n} images, {1000 * total / n:.3f} ms per image under cProfile\n")
    stats.print_stats(20)
    return out.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512, help="photo-like images to generate")
    p.add_argument("--folder", type=Path, help="an ImageFolder tree of your own images instead")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--passes", type=int, default=3, help="timed passes after the warm-up (the best is reported)")
    p.add_argument("--baseline", metavar="REF", help="also time the shard stream of this git commit, side by side")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the stream (in-process)")
    p.add_argument("--device-decode", metavar="DEVICE",
                   help="also time data.decode_device=cuda's path, decoding on DEVICE (cuda, or cpu to run it here)")
    p.add_argument("--exact", action="store_true",
                   help="also time the exact-input mode: shards built with --no-resize, data.jpeg_draft=false")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data_timing.py").write_text(TIMING)
        sys.path.insert(0, str(tmp))
        images = a.folder or tmp / "img"
        if a.folder is None:
            make_images(images, a.images, a.classes, seed=0)
        with contextlib.redirect_stdout(sys.stderr):
            build_image_folder(images, tmp / "shards", "train", shard_size=64, workers=1,
                               progress=False, resize=256)
        if a.profile:
            print(profile_stream(tmp / "shards", a.batch, a.res), file=sys.stderr)
        folder = time_folder(images, a.workers, a.batch, a.res, a.passes)
        with worktree(a.baseline) as base:
            shards = time_shards(REPO, tmp / "shards", a.workers, a.batch, a.res, a.passes, tmp)
            baseline = time_shards(base, tmp / "shards", a.workers, a.batch, a.res, a.passes, tmp) if base else None
            exact = time_full_size(images, tmp, a, base) if a.exact else None
        on_device = time_shards(REPO, tmp / "shards", a.workers, a.batch, a.res, a.passes, tmp, a.device_decode) \
            if a.device_decode else None
    report(a, folder, shards, baseline, on_device, exact)


def time_full_size(images: Path, tmp: Path, a, base: Path | None) -> dict:
    """Shards that keep the original JPEGs (--no-resize): decoded at a reduced DCT scale (the default
    data.jpeg_draft, also by --baseline's code when given), and at full size (the exact-input mode)."""
    with contextlib.redirect_stdout(sys.stderr):
        build_image_folder(images, tmp / "exact", "train", shard_size=64, workers=1, progress=False, resize=None)
    out = {"draft": time_shards(REPO, tmp / "exact", a.workers, a.batch, a.res, a.passes, tmp)}
    if base:
        out["draft_baseline"] = time_shards(base, tmp / "exact", a.workers, a.batch, a.res, a.passes, tmp)
    out["exact"] = time_shards(REPO, tmp / "exact", a.workers, a.batch, a.res, a.passes, tmp, exact=True)
    return out


def report(a, folder: dict, shards: dict, baseline: dict | None, on_device: dict | None, exact: dict | None) -> None:
    per = {k: v["images_per_s"] / a.workers for k, v in (("folder", folder), ("shards", shards), ("baseline", baseline)) if v}
    out = {"images": shards["images"], "workers": a.workers, "batch": a.batch, "transform": f"LIFT train, {a.res} px",
           "source": str(a.folder) if a.folder else "800x600 photo-like JPEG", "shards_resized_at_build": 256,
           "folder": folder, "shards": shards, "baseline": baseline and dict(baseline, ref=a.baseline),
           "images_per_s_per_worker": per, "speedup_wall": shards["images_per_s"] / folder["images_per_s"],
           "speedup_worker_cpu": folder["worker_cpu_ms_per_image"] / shards["worker_cpu_ms_per_image"]}
    if on_device:
        out["device_decode"] = dict(on_device, device=a.device_decode)
    if exact:
        out["exact"] = exact
    if baseline:
        out["over_baseline_wall"] = shards["images_per_s"] / baseline["images_per_s"]
        out["over_baseline_worker_cpu"] = baseline["worker_cpu_ms_per_image"] / shards["worker_cpu_ms_per_image"]
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"decode + LIFT train transform + batches of {a.batch}, {out['images']} images ({out['source']}), "
          f"{a.workers} worker(s), persistent, best of {a.passes} passes")
    rows = [("folder of JPEGs (ImageFolder + PIL)", folder), ("lift-dist shards", shards)]
    if baseline:
        rows.append((f"lift-dist shards at {a.baseline}", baseline))
    if on_device:
        rows.append((f"shards, decoded on {a.device_decode} (main)", on_device))
    if exact:
        rows.append(("full-size shards (--no-resize), draft", exact["draft"]))
        if "draft_baseline" in exact:
            rows.append((f"full-size shards, draft, at {a.baseline}", exact["draft_baseline"]))
        rows.append(("exact inputs (--no-resize, no draft)", exact["exact"]))
    for name, r in rows:
        first = r["first_pass_images_per_s"] / a.workers
        print(f"  {name:38s} {r['images_per_s'] / a.workers:7.1f} img/s per worker (first pass {first:6.1f}), "
              f"workers' CPU {r['worker_cpu_ms_per_image']:.2f} ms/image")
    print(f"  shards / folder: {out['speedup_wall']:.2f}x wall, {out['speedup_worker_cpu']:.2f}x worker CPU")
    if baseline:
        print(f"  shards now / at {a.baseline}: {out['over_baseline_wall']:.2f}x wall, {out['over_baseline_worker_cpu']:.2f}x worker CPU")


if __name__ == "__main__":
    main()
