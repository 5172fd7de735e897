"""`lift-dist predict`: class probabilities for images, or a whole shard split, from a trained run
(`--run`: the base open_clip model rebuilt by name, then the trainable-only checkpoint) or from an
exported model (`--model FILE`, see lift_dist.export).

A shard split is predicted on every rank of the launch (one process, torchrun, or Slurm through
`lift-dist launch -- predict ...`): each rank takes its share of the shards, rank 0 gathers the rows
and writes one Parquet file, sorted by sample key, so the rows are the same whatever the number of
ranks. A run's model computes in the run's `eval_precision` (`--precision` overrides it), resolved for
the device it predicts on; on the device type it trained on, its predictions are those its metrics counted.
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
import torch.distributed as dist
from PIL import Image, ImageOps

from lift_dist.data.location import is_remote
from lift_dist.data.manifest import read_manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, loader_batches, make_loader
from lift_dist.engine.evaluate import load_run, logits_in, precisions, transform_for
from lift_dist.engine.launcher_env import detect
from lift_dist.errors import ConfigError, DataError
from lift_dist.export import ExportedModel
from lift_dist.run_dir import RunDir, check_output_file
from lift_dist.shards.images import to_rgb
from lift_dist.transforms import average_crop_logits, without_normalize


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA GPU is visible")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", detect()[2] % torch.cuda.device_count())  # this rank's GPU under torchrun/Slurm
    return torch.device("cpu")


def load_for_inference(run_dir: Path, checkpoint: str | None, device: torch.device = torch.device("cpu")):
    run = RunDir(run_dir)
    classes = run.read_classes()
    model, cfg = load_run(run.path, checkpoint, num_classes=len(classes["names"]))
    return model.to(device), cfg, classes


class Predictor:
    """Logits and input transforms of a trained run or of an exported model."""

    def __init__(self, run: str | None, model_file: str | None, checkpoint: str | None, device: torch.device,
                 precision: str = "run"):
        self.device, self.precision = device, "fp32"
        if model_file:
            self.exported = ExportedModel(Path(model_file), device)
            meta = self.exported.meta
            self.names, self.resolution = meta["class_names"], meta["input"]["resolution"]
            pre = meta["preprocessing"]
            self.data = argparse.Namespace(interpolation=pre["interpolation"], tte_mode=pre["tte"]["mode"],
                                           tte_expand=pre["tte"]["expand"], tte_views=pre["tte"]["views"])
        else:
            self.model, cfg, classes = load_for_inference(Path(run), checkpoint, device)
            self.exported, self.names, self.data = None, classes["names"], cfg.data
            self.resolution = cfg.data.resolution or self.model.encoder.image_size
            self.precision = precisions(cfg, device)[1] if precision == "run" else precision
            self.forward = logits_in(self.model, self.precision)

    def transform(self, tte: bool):
        tf = transform_for(self.data, self.resolution, tte)
        return without_normalize(tf) if self.exported is not None else tf  # exported models normalise inside

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.exported is not None:
            return self.exported.logits(x)
        return self.forward(x.to(self.device, non_blocking=True))

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, tte: bool) -> torch.Tensor:
        logits = average_crop_logits(self._logits, batch) if tte else self._logits(batch)
        logits = logits.half() if self.precision == "fp16" else logits  # the crops' mean rounded, as evaluate does
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


def predict_images(p: Predictor, paths: list[str], tte: bool, top_k: int, batch_size: int) -> list[dict]:
    tf = p.transform(tte)
    tensors = [read_image(path, tf) for path in paths]  # every file checked before any prediction
    rows = []
    for i in range(0, len(tensors), batch_size):
        probs = p.probabilities(torch.stack(tensors[i : i + batch_size]), tte)
        q, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for j in range(len(idx)):
            rows.append({"image": paths[i + j], "predictions": [
                {"rank": r + 1, "label": int(c), "class": p.names[int(c)], "probability": float(v)}
                for r, (v, c) in enumerate(zip(q[j], idx[j]))]})
    return rows


def check_labels(manifest, names: list[str], shards, split: str) -> None:
    if manifest.num_classes != len(names):
        raise DataError(f"{shards} '{split}' has {manifest.num_classes} classes but the model was trained on {len(names)}")
    differ = [i for i, (a, b) in enumerate(zip(manifest.class_names, names)) if a != b]
    if differ:
        i = differ[0]
        raise DataError(f"{shards} '{split}' labels classes differently from the model ({len(differ)} differ; label {i} is "
                        f"'{manifest.class_names[i]}' there, '{names[i]}' in the model): build the shards with its label scheme")


def shard_rows(p: Predictor, manifest, tte: bool, top_k: int, batch_size: int, rank: int, world: int) -> dict:
    """Columns of this rank's share of the split's samples."""
    stream = ShardStream(manifest, ShardPlan(len(manifest.shard_files), manifest.shard_samples, 0, world), rank, FixedEpoch(),
                         p.transform(tte), train=False, num_classes=manifest.num_classes,
                         reseed=tte and p.data.tte_mode == "randaug")
    cols = {"key": [], "label": [], "predicted": [], "probability": [], "top_k_labels": [], "top_k_probabilities": []}
    for x, y, keys in loader_batches(make_loader(stream, 1), batch_size):
        probs = p.probabilities(x, tte)
        q, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        cols["key"] += keys
        cols["label"] += y.tolist()
        cols["predicted"] += idx[:, 0].tolist()
        cols["probability"] += q[:, 0].tolist()
        cols["top_k_labels"] += idx.tolist()
        cols["top_k_probabilities"] += q.tolist()
    return cols


def gather_rows(cols: dict) -> dict:
    """Every rank's columns on rank 0, in one order whatever the world size (by sample key)."""
    parts = [cols]
    if dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, cols)  # in memory, between this launch's own processes
    rows = sorted((r for part in parts for r in zip(*part.values())), key=lambda r: r[0])
    return {k: [r[i] for r in rows] for i, k in enumerate(cols)}


def predict_shards(p: Predictor, args: argparse.Namespace) -> int:
    m = read_manifest(args.shards, args.split, args.shard_pipe or getattr(p.data, "shard_pipe", None))
    check_labels(m, p.names, args.shards, args.split)
    rank, world, _, _ = detect()
    if world > 1 and not dist.is_initialized():
        # Plain torch.distributed: prediction only gathers rows, it needs none of DeepSpeed (whose
        # import alone takes seconds and logs to stdout, where the CSV goes).
        if p.device.type == "cuda":
            torch.cuda.set_device(p.device)  # NCCL's collectives run on the current device
        dist.init_process_group("nccl" if p.device.type == "cuda" else "gloo")
    cols = gather_rows(shard_rows(p, m, args.tte, args.top_k, args.batch_size, rank, world))
    if rank == 0:
        cols["predicted_class"] = [p.names[i] for i in cols["predicted"]]
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp")
        pq.write_table(pa.table(cols), tmp)
        os.replace(tmp, out)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return len(cols["key"])


def write_rows(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    w = csv.writer(sys.stdout)
    w.writerow(["image", "rank", "label", "class", "probability"])
    for r in rows:
        for q in r["predictions"]:
            w.writerow([r["image"], q["rank"], q["label"], q["class"], f"{q['probability']:.6f}"])


def check_args(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if bool(args.run) == bool(args.model):
        raise ConfigError("give --run RUN (a training run) or --model FILE (an exported model), not both or neither")
    if bool(args.images) == bool(args.shards):
        raise ConfigError("give image files, or --shards DIR (with --out FILE.parquet), not both or neither")
    if args.shards and not args.out:
        raise ConfigError("--shards needs --out FILE.parquet")
    if args.out:
        check_output_file(args.out, "--out", run=args.run, shards=None if is_remote(args.shards) else args.shards,
                          model=args.model)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    p = Predictor(args.run, args.model, args.checkpoint, pick_device(args.device), args.precision)
    if args.shards:
        n = predict_shards(p, args)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"wrote {n} predictions to {args.out}")
        return 0
    write_rows(predict_images(p, args.images, args.tte, args.top_k, args.batch_size), args.format)
    return 0


__all__ = ["Predictor", "load_for_inference", "pick_device", "predict_images", "predict_shards", "run"]
