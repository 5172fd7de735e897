"""`lift-dist predict`: class probabilities for images (or a whole shard split) from a trained run.

The base open_clip model is rebuilt by name and weights from RUN/config.yaml, then the trainable-only
checkpoint is loaded; a checkpoint made for other modules or another class count is refused.
`--device cuda` runs on the GPU with bf16 autocast (as training evaluates); `auto` picks the GPU if
there is one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps

from lift_dist.data.manifest import read_manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, make_loader, rebatch
from lift_dist.engine.evaluate import autocast_context, load_run
from lift_dist.engine.evaluate import transform_for as evaluation_transform
from lift_dist.errors import ConfigError, DataError
from lift_dist.run_dir import RunDir
from lift_dist.shards.images import to_rgb
from lift_dist.transforms import average_crop_logits


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA GPU is visible")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def load_for_inference(run_dir: Path, checkpoint: str | None, device: torch.device = torch.device("cpu")):
    run = RunDir(run_dir)
    classes = run.read_classes()
    model, cfg = load_run(run.path, checkpoint, num_classes=len(classes["names"]))
    return model.to(device), cfg, classes


def transform_for(cfg, model, tte: bool):
    return evaluation_transform(cfg.data, cfg.data.resolution or model.encoder.image_size, tte)


@torch.no_grad()
def probabilities(model, batch: torch.Tensor, tte: bool) -> torch.Tensor:
    device = next(model.parameters()).device
    batch = batch.to(device, non_blocking=True)
    with autocast_context(device, "bf16" if device.type == "cuda" else "fp32"):
        logits = average_crop_logits(model, batch) if tte else model(batch)
    return logits.float().softmax(dim=1).cpu()


def read_image(path: str, tf) -> torch.Tensor:
    if not os.path.isfile(path):
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            # As the shard builder prepares training images: EXIF orientation, alpha over white.
            return tf(to_rgb(ImageOps.exif_transpose(im)))
    except Exception as e:
        raise DataError(f"image {path} cannot be read ({type(e).__name__}: {e})") from None


def predict_images(model, cfg, names, paths, tte, top_k, batch_size):
    tf = transform_for(cfg, model, tte)
    tensors = [read_image(p, tf) for p in paths]  # every file checked before any prediction
    rows = []
    for i in range(0, len(tensors), batch_size):
        probs = probabilities(model, torch.stack(tensors[i : i + batch_size]), tte)
        p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for j in range(len(idx)):
            rows.append({"image": paths[i + j], "predictions": [
                {"rank": r + 1, "label": int(c), "class": names[int(c)], "probability": float(q)}
                for r, (q, c) in enumerate(zip(p[j], idx[j]))]})
    return rows


def check_labels(manifest, classes: dict, shards, split: str) -> None:
    names = classes["names"]
    if manifest.num_classes != len(names):
        raise DataError(f"{shards} '{split}' has {manifest.num_classes} classes but the run was trained on {len(names)}")
    differ = [i for i, (a, b) in enumerate(zip(manifest.class_names, names)) if a != b]
    if differ:
        i = differ[0]
        raise DataError(f"{shards} '{split}' labels classes differently from the run ({len(differ)} differ; label {i} is "
                        f"'{manifest.class_names[i]}' there, '{names[i]}' in the run): build the shards with the run's label scheme")


def predict_shards(model, cfg, classes, shards, split, tte, top_k, batch_size, out: Path) -> int:
    m = read_manifest(shards, split)
    check_labels(m, classes, shards, split)
    stream = ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), transform_for(cfg, model, tte),
                         train=False, num_classes=m.num_classes, reseed=tte and cfg.data.tte_mode == "randaug")
    cols = {"key": [], "label": [], "predicted": [], "probability": [], "top_k_labels": [], "top_k_probabilities": []}
    for x, y, keys in rebatch(iter(make_loader(stream, 1)), batch_size):
        probs = probabilities(model, x, tte)
        p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        cols["key"] += keys
        cols["label"] += y.tolist()
        cols["predicted"] += idx[:, 0].tolist()
        cols["probability"] += p[:, 0].tolist()
        cols["top_k_labels"] += idx.tolist()
        cols["top_k_probabilities"] += p.tolist()
    cols["predicted_class"] = [classes["names"][i] for i in cols["predicted"]]
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, out)
    return len(cols["key"])


def write_rows(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    w = csv.writer(sys.stdout)
    w.writerow(["image", "rank", "label", "class", "probability"])
    for r in rows:
        for p in r["predictions"]:
            w.writerow([r["image"], p["rank"], p["label"], p["class"], f"{p['probability']:.6f}"])


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if bool(args.images) == bool(args.shards):
        raise ConfigError("give image files, or --shards DIR (with --out FILE.parquet), not both or neither")
    if args.shards and not args.out:
        raise ConfigError("--shards needs --out FILE.parquet")
    device = pick_device(args.device)
    model, cfg, classes = load_for_inference(Path(args.run), args.checkpoint, device)
    if args.shards:
        n = predict_shards(model, cfg, classes, args.shards, args.split, args.tte, args.top_k, args.batch_size, Path(args.out))
        print(f"wrote {n} predictions to {args.out}")
        return 0
    write_rows(predict_images(model, cfg, classes["names"], args.images, args.tte, args.top_k, args.batch_size), args.format)
    return 0
