"""`lift-dist predict`: class probabilities for images (or a whole shard split) from a trained run.

The base open_clip model is rebuilt by name and weights from RUN/config.yaml, then the trainable-only
checkpoint is loaded; a checkpoint made for other modules or another class count is refused.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch

from lift_dist.errors import DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--run", required=True, help="run directory (config.yaml, classes.json, checkpoints/)")
    p.add_argument("--checkpoint", help="checkpoint directory (default: the run's latest)")
    p.add_argument("--tte", action="store_true", help="test-time ensembling (five crops, logits averaged)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--shards", help="predict every sample of a shard split instead of image files")
    p.add_argument("--split", default="test", help="split of --shards (default test)")
    p.add_argument("--out", help="Parquet file for --shards predictions")
    p.add_argument("--batch-size", type=int, default=64)


def load_for_inference(run_dir: Path, checkpoint: str | None):
    from lift_dist.engine import checkpoint as ckpt
    from lift_dist.engine.evaluate import load_run

    classes_file = run_dir / "classes.json"
    if not classes_file.is_file():
        raise DataError(f"{run_dir} is not a finished lift-dist run directory (no classes.json)")
    classes = json.loads(classes_file.read_text())
    path = ckpt.resolve(run_dir, checkpoint or "latest")
    if path is None:
        raise DataError(f"{run_dir} has no checkpoint yet")
    head = ckpt.load_trainable(path).get("head.weight")
    if head is not None and head.shape[0] != len(classes["names"]):
        raise DataError(f"checkpoint {path} has a head for {head.shape[0]} classes but run {run_dir} has "
                        f"{len(classes['names'])} classes")
    model, cfg = load_run(run_dir, str(path), num_classes=len(classes["names"]))
    return model, cfg, classes


def transform_for(cfg, model, tte: bool):
    from lift_dist.transforms import eval_transform, tte_transform

    res = cfg.data.resolution or model.encoder.image_size
    if tte:
        return tte_transform(res, mode=cfg.data.tte_mode, expand=cfg.data.tte_expand, interpolation=cfg.data.interpolation)
    return eval_transform(res, interpolation=cfg.data.interpolation)


@torch.no_grad()
def logits_of(model, batch: torch.Tensor, tte: bool) -> torch.Tensor:
    from lift_dist.transforms import average_crop_logits

    return average_crop_logits(model, batch) if tte else model(batch)


def predict_images(model, cfg, names, paths, tte, top_k, batch_size):
    from PIL import Image, ImageOps

    from lift_dist.shards.images import to_rgb

    tf = transform_for(cfg, model, tte)
    tensors = []
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"image {p} does not exist")
        try:
            with Image.open(p) as im:
                # As the shard builder prepares training images: EXIF orientation, alpha over white.
                tensors.append(tf(to_rgb(ImageOps.exif_transpose(im))))
        except Exception as e:
            raise DataError(f"image {p} cannot be read ({type(e).__name__}: {e})") from None
    rows = []
    for i in range(0, len(tensors), batch_size):
        probs = logits_of(model, torch.stack(tensors[i : i + batch_size]), tte).float().softmax(dim=1)
        p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for j in range(len(idx)):
            rows.append({"image": paths[i + j], "predictions": [
                {"rank": r + 1, "label": int(c), "class": names[int(c)], "probability": float(q)}
                for r, (q, c) in enumerate(zip(p[j], idx[j]))]})
    return rows


def predict_shards(model, cfg, classes, shards, split, tte, top_k, batch_size, out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lift_dist.data.manifest import read_manifest
    from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, make_loader, rebatch

    m = read_manifest(shards, split)
    if m.num_classes != len(classes["names"]):
        raise DataError(f"{shards} '{split}' has {m.num_classes} classes but the run was trained on {len(classes['names'])}")
    differ = [i for i, (a, b) in enumerate(zip(m.class_names, classes["names"])) if a != b]
    if differ:
        i = differ[0]
        raise DataError(f"{shards} '{split}' labels classes differently from the run ({len(differ)} differ; label {i} is "
                        f"'{m.class_names[i]}' there, '{classes['names'][i]}' in the run): build the shards with the run's label scheme")

    stream = ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), transform_for(cfg, model, tte),
                         train=False, num_classes=m.num_classes)
    cols = {"key": [], "label": [], "predicted": [], "probability": [], "top_k_labels": [], "top_k_probabilities": []}
    for x, y, keys in rebatch(iter(make_loader(stream, 1)), batch_size):
        probs = logits_of(model, x, tte).float().softmax(dim=1)
        p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        cols["key"] += keys
        cols["label"] += y.tolist()
        cols["predicted"] += idx[:, 0].tolist()
        cols["probability"] += p[:, 0].tolist()
        cols["top_k_labels"] += idx.tolist()
        cols["top_k_probabilities"] += p.tolist()
    cols["predicted_class"] = [classes["names"][i] for i in cols["predicted"]]
    tmp = out.with_suffix(".tmp")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, out)
    return len(cols["key"])


def run(args: argparse.Namespace) -> int:
    from lift_dist.errors import ConfigError

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    if bool(args.images) == bool(args.shards):
        raise ConfigError("give image files, or --shards DIR (with --out FILE.parquet), not both or neither")
    model, cfg, classes = load_for_inference(Path(args.run), args.checkpoint)
    if args.shards:
        if not args.out:
            raise ConfigError("--shards needs --out FILE.parquet")
        n = predict_shards(model, cfg, classes, args.shards, args.split, args.tte, args.top_k, args.batch_size, Path(args.out))
        print(f"wrote {n} predictions to {args.out}")
        return 0
    rows = predict_images(model, cfg, classes["names"], args.images, args.tte, args.top_k, args.batch_size)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        w = csv.writer(sys.stdout)
        w.writerow(["image", "rank", "label", "class", "probability"])
        for r in rows:
            for p in r["predictions"]:
                w.writerow([r["image"], p["rank"], p["label"], p["class"], f"{p['probability']:.6f}"])
    return 0
