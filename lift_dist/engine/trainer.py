"""The training loop: shards -> frozen CLIP + lightweight module + head -> DeepSpeed data parallel.

Only the trainable tensors (module + head) go to DeepSpeed's optimizer, so only they are all-reduced,
hold optimizer state and are checkpointed.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lift_dist.config import RunConfig, save_yaml
from lift_dist.data.manifest import read_manifest
from lift_dist.data.pipeline import (
    FixedEpoch,
    ShardPlan,
    ShardStream,
    check_shard_count,
    make_loader,
    rebatch,
    sample_weights_for_step,
    steps_in_epoch,
)
from lift_dist.engine import checkpoint
from lift_dist.engine.distributed import DistInfo, all_reduce_sum_, broadcast_, setup
from lift_dist.engine.evaluate import evaluate
from lift_dist.errors import ConfigError, DataError, LiftError
from lift_dist.model.backbone import get_tokenizer
from lift_dist.model.lift_model import build_model


class NonFiniteLoss(LiftError):
    pass


class PhaseTimes:
    """Wall time per phase of the step (profile_phases=true; synchronises the device, so it costs speed).
    DeepSpeed all-reduces inside backward; its allreduce_gradients is wrapped to time that part apart."""

    def __init__(self, engine, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.times = dict.fromkeys(("forward", "backward", "all_reduce", "optimizer"), 0.0)
        self.t = 0.0
        inner = engine.allreduce_gradients

        def timed_allreduce(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.sync()
            self.times["all_reduce"] += time.perf_counter() - t0
            return out

        engine.allreduce_gradients = timed_allreduce

    def start(self) -> None:
        self.sync()
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.times[phase] += now - self.t
        self.t = now

    def take(self, data: float) -> dict:
        out = {"data": data, **self.times}
        out["backward"] -= out["all_reduce"]  # it ran inside backward
        self.times = dict.fromkeys(self.times, 0.0)
        return out


def log(info: DistInfo, run_dir: Path, msg: str) -> None:
    if info.is_main:
        print(msg, flush=True)
        with open(run_dir / "log.txt", "a") as f:
            f.write(msg + "\n")


def batch_layout(cfg: RunConfig, world: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps) for the global batch, or a clear error."""
    b = cfg.optim.batch_size
    micro = cfg.optim.micro_batch_size or max(1, b // world)
    if b % (micro * world):
        raise ConfigError(
            f"global batch optim.batch_size={b} is not divisible by world size {world} × micro-batch "
            f"{micro} = {micro * world}; choose optim.batch_size or optim.micro_batch_size so that it is"
        )
    return micro, b // (micro * world)


def lr_factor(cfg: RunConfig, epoch: int, global_step: int, total_steps: int) -> float:
    o = cfg.optim
    if o.warmup_steps and global_step < o.warmup_steps:
        return (global_step + 1) / o.warmup_steps
    if o.schedule == "cosine_epoch":  # constant within an epoch, as in LIFT
        return 0.5 * (1 + math.cos(math.pi * epoch / o.epochs))
    if o.schedule == "cosine_step":
        t = (global_step - o.warmup_steps) / max(1, total_steps - o.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return 1.0


def build_optimizer(cfg: RunConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optim
    if not params:
        raise ConfigError("nothing to train: the chosen modules and head have no trainable tensors")
    # Weight decay on every trainable tensor, as in LIFT (no exclusion list).
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def deepspeed_config(cfg: RunConfig, micro: int, accum: int, world: int, precision: str = "fp32") -> dict:
    return {
        "train_batch_size": micro * accum * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "zero_optimization": {"stage": cfg.optim.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "comms_logger": {"enabled": os.environ.get("LIFT_DIST_COMMS_LOG") == "1", "prof_all": True, "verbose": False},
        # DeepSpeed switches off an outer torch.autocast inside its engine; bf16 must be configured
        # here. No module is listed as lower-precision-safe, so gradients are all-reduced in fp32.
        "torch_autocast": {"enabled": precision == "bf16", "dtype": "bfloat16", "lower_precision_safe_modules": []},
    }


def init_head(model, clip, cfg: RunConfig, info: DistInfo, class_names: list[str], train_manifest, resolution: int) -> None:
    from lift_dist.head_init import semantic_weights

    mcfg = cfg.model
    weight = model.head.weight
    if mcfg.head_init == "random":
        return
    if mcfg.head_init == "semantic":
        # Computed once on rank 0 (text tower), then broadcast.
        w = torch.zeros_like(weight, device="cpu")
        if info.is_main:
            descriptions = None
            if mcfg.prompt == "descriptions":
                path = Path(mcfg.descriptions)
                if not path.is_file():
                    raise ConfigError(f"model.descriptions file {path} does not exist")
                descriptions = json.loads(path.read_text())
            w = semantic_weights(
                clip, get_tokenizer(mcfg.name), class_names, prompt=mcfg.prompt, template=mcfg.template, descriptions=descriptions
            ).float()
        broadcast_(w, info.device)
        model.head.set_weight(w)
        return
    # class_mean: features of up to 100 training images per class with the modules attached (LIFT+).
    from lift_dist.transforms import eval_transform

    C = len(class_names)
    cap = math.ceil(100 / info.world)
    sums = torch.zeros(C, weight.shape[1], dtype=torch.float64)
    counts = torch.zeros(C, dtype=torch.int64)
    plan = ShardPlan(len(train_manifest.shard_files), train_manifest.shard_samples, cfg.seed, info.world)

    stream = ShardStream(train_manifest, plan, info.rank, FixedEpoch(), eval_transform(resolution, cfg.data.interpolation), train=False, num_classes=C)
    model.eval()
    with torch.no_grad():
        for x, y, _ in rebatch(iter(make_loader(stream, 0)), 64):
            keep = torch.tensor([counts[int(c)] < cap for c in y])
            if not keep.any():
                continue
            x, y = x[keep], y[keep]
            feats = model.features(x.to(info.device)).double().cpu()
            sums.index_add_(0, y, feats)
            counts += torch.bincount(y, minlength=C)
    all_reduce_sum_(sums, info.device)
    all_reduce_sum_(counts, info.device)
    model.head.set_weight(_normalised_means(sums, counts, class_names))
    model.train()


def _normalised_means(sums, counts, class_names):
    empty = [class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise DataError(f"class-mean head init: no training image for class(es) {', '.join(empty[:5])}")
    means = (sums / counts[:, None]).float()
    return torch.nn.functional.normalize(means, dim=1)


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True))
    os.replace(tmp, path)


def write_per_class(path: Path, metrics_by_mode: dict, class_names, train_counts, groups) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {
        "label": list(range(len(class_names))),
        "name": list(class_names),
        "train_count": [int(c) for c in train_counts],
        "group": list(groups),
    }
    for mode, m in metrics_by_mode.items():
        cols[f"accuracy_{mode}"] = [float(a) for a in m["per_class"]]
        cols[f"eval_count_{mode}"] = [int(c) for c in m["per_class_count"]]
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, path)


def write_confusions(path: Path, metrics_by_mode: dict) -> None:
    """Sparse confusion counts (mistakes only) per evaluation mode: mode, true, predicted, count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(mode, t, p, n) for mode, m in metrics_by_mode.items() for (t, p), n in sorted(m["confusions"].items())]
    table = pa.table({"mode": [r[0] for r in rows], "true": [r[1] for r in rows], "predicted": [r[2] for r in rows],
                      "count": [r[3] for r in rows]},
                     schema=pa.schema([("mode", pa.string()), ("true", pa.int64()), ("predicted", pa.int64()), ("count", pa.int64())]))
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def trim_history(path: Path, epochs_done: int) -> None:
    """Keep the history of the epochs a resumed run keeps (none on a fresh start in an old run dir)."""
    if not path.is_file():
        return
    def kept(line: str) -> bool:
        try:
            return json.loads(line).get("epoch", 0) <= epochs_done
        except (json.JSONDecodeError, AttributeError):
            return False  # a line cut short by a kill

    keep = [line for line in path.read_text().splitlines() if line.strip() and kept(line)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def summary_metrics(m: dict) -> dict:
    """The five headline numbers; an empty group (NaN) becomes None (null in JSON)."""
    keys = ("overall", "mean_class", "head", "medium", "tail")
    return {k: (None if m[k] is None or math.isnan(m[k]) else float(m[k])) for k in keys}


def train(cfg: RunConfig) -> dict:
    info = setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: RunConfig, info: DistInfo) -> dict:
    import deepspeed

    if not cfg.data.shards:
        raise ConfigError("no shard directory given: set data.shards (or --shards DIR)")
    run_dir = Path(cfg.out)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
    dist.barrier()

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if info.device.type == "cuda" else "fp32")

    train_m = read_manifest(cfg.data.shards, cfg.data.train_split)
    eval_m = read_manifest(cfg.data.shards, cfg.data.eval_split)
    train_m.check_sizes()
    eval_m.check_sizes()
    C = train_m.num_classes
    if eval_m.num_classes != C:
        raise DataError(f"the {eval_m.split} manifest has {eval_m.num_classes} classes but {train_m.split} has {C}")
    check_shard_count(train_m, info.world, cfg.data.workers, "training")
    counts = train_m.train_counts

    model, clip = build_model(cfg.model, C)
    if model.head.weight.shape[0] != C:
        raise DataError(f"head has {model.head.weight.shape[0]} outputs but the data has {C} classes")
    resolution = cfg.data.resolution or model.encoder.image_size
    init_head(model, clip, cfg, info, train_m.class_names, train_m, resolution)
    del clip  # frees the text tower; the encoder keeps only the visual modules it uses
    gc.collect()
    model.to(info.device)
    report = model.parameter_report()
    if cfg.compile == "always" or (cfg.compile == "auto" and info.device.type == "cuda"):
        # In place, so parameter names (and checkpoints) are unchanged. Measured on an H100, ViT-B/16
        # AdaptFormer bf16: 2,613 -> 4,009 img/s (benchmarks/step.py --compile).
        model.encoder.compile()

    micro, accum = batch_layout(cfg, info.world)
    # config.yaml records the model's resolution; device, precision and world size (which depend on the
    # machine, so a config.yaml stays usable on another) go to metrics.json.
    cfg.data.resolution = resolution
    if info.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
    params = [p for _, p in model.trainable_named_parameters()]
    optimizer = build_optimizer(cfg, params)
    engine, ds_opt, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, optimizer=optimizer, config=deepspeed_config(cfg, micro, accum, info.world, precision), dist_init_required=False
    )
    phases = PhaseTimes(engine, info.device) if cfg.profile_phases else None
    from lift_dist.losses import build_loss
    from lift_dist.transforms import (SharedEpoch, eval_transform, lift_train_transform, minimalist_train_transform,
                                      normalize_uint8, uint8_output)

    loss_fn = build_loss(cfg.optim.loss, torch.as_tensor(counts), scale=cfg.model.scale).to(info.device)

    epoch_value = SharedEpoch(0)
    d = cfg.data
    if d.augment == "mda":
        train_tf = minimalist_train_transform(resolution, cfg.optim.epochs, d.mda_schedule, epoch_value, interpolation=d.interpolation)
    elif d.augment == "lift":
        train_tf = lift_train_transform(resolution, interpolation=d.interpolation)
    else:
        train_tf = eval_transform(resolution, interpolation=d.interpolation)
    train_tf = uint8_output(train_tf)  # workers ship uint8; normalised per batch on the device
    plan = ShardPlan(len(train_m.shard_files), train_m.shard_samples, cfg.seed, info.world)
    per_rank_resampled = math.ceil(train_m.num_samples / info.world)
    stream = ShardStream(
        train_m, plan, info.rank, epoch_value, train_tf, train=True, num_classes=C, shuffle_buffer=d.shuffle_buffer,
        resampled=d.epoch_mode == "resampled", seed=cfg.seed, samples_per_rank=per_rank_resampled,
        decode_min_side=resolution * 8 // 7 if d.jpeg_draft else None, decode_to_tensor=True,
    )
    cache = None
    if d.feature_cache:
        from lift_dist.engine.feature_cache import FeatureCache

        cache = FeatureCache.prepare(model, cfg, train_m, info, resolution, precision, log=lambda m: log(info, run_dir, m))
        loader = None  # no image decoding at all: batches come from the cache
    else:
        loader = make_loader(stream, d.workers)

    def epoch_counts(epoch: int) -> list[int]:
        if d.epoch_mode == "resampled":
            return [per_rank_resampled] * info.world
        return [plan.rank_samples(epoch, r) for r in range(info.world)]

    steps_per_epoch = [steps_in_epoch(epoch_counts(e), micro, accum) for e in range(cfg.optim.epochs)]
    total_steps = sum(steps_per_epoch)

    # What fixes the data order and step layout: a resume under other values would skip or repeat samples.
    run_signature = {
        "world_size": info.world, "micro_batch": micro, "accumulation": accum, "batch_size": cfg.optim.batch_size,
        "epochs": cfg.optim.epochs, "seed": cfg.seed, "workers": 0 if d.feature_cache else d.workers,
        "shuffle_buffer": d.shuffle_buffer, "epoch_mode": d.epoch_mode, "feature_cache": bool(d.feature_cache),
        "train_shards": hashlib.sha256("".join(train_m.shard_sha256).encode()).hexdigest()[:16],
    }
    start_epoch, start_step, global_step = 0, 0, 0
    if cfg.resume:
        path = checkpoint.resolve(run_dir, cfg.resume)
        if path is None:
            log(info, run_dir, f"resume=latest: no checkpoint in {run_dir / 'checkpoints'} yet, starting fresh")
        else:
            state = checkpoint.load(path, model, engine.optimizer, info.rank, cfg.optim.zero_stage)
            if state["step_in_epoch"] > 0:  # at an epoch boundary nothing can be skipped or repeated
                checkpoint.check_same_run(path, state.get("run"), run_signature)
            start_epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
            log(info, run_dir, f"resumed from {path} at epoch {start_epoch}, step {start_step} of the epoch")

    if info.is_main:
        trim_history(run_dir / "history.jsonl", start_epoch)
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
        log(info, run_dir, f"lift-dist train: {report['model']} + {','.join(report['modules'])}: "
            f"{report['trainable']:,} trainable ({report['peft']:,} module + {report['head']:,} head), "
            f"{info.world} rank(s) [{info.backend}, {precision}], global batch {cfg.optim.batch_size} = "
            f"{info.world} × {micro} × {accum} accumulation, {total_steps} steps")

    if info.is_main:
        write_json_atomic(run_dir / "classes.json", {"names": train_m.class_names, "train_counts": [int(c) for c in counts],
                                                      "groups": train_m.groups})
    t_start = time.time()
    last_good = None
    stop = False
    lr = cfg.optim.lr
    step = 0
    batches = iter(())
    for epoch in range(start_epoch, cfg.optim.epochs):
        if stop:
            break
        epoch_value.set(epoch)
        counts_e = epoch_counts(epoch)
        n_steps = steps_per_epoch[epoch]
        if cache is not None:
            batches = cache.batches(plan, epoch, info.rank, cfg.seed, micro)
        else:
            batches = rebatch(iter(loader), micro)
        first = start_step if epoch == start_epoch else 0
        last_batch = None
        for _ in range(first * accum):  # replay the epoch's data order up to the resume point
            last_batch = next(batches, None) or last_batch
        t_epoch, t_data, seen, loss_sum, loss_n = time.time(), 0.0, 0, 0.0, 0
        bar = None
        if info.is_main:
            from tqdm import tqdm

            bar = tqdm(total=n_steps, initial=first, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False,
                       dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
        for step in range(first, n_steps):
            lr = cfg.optim.lr * lr_factor(cfg, epoch, global_step, total_steps)
            for g in engine.optimizer.param_groups:
                g["lr"] = lr
            n_step = sample_weights_for_step(counts_e, micro, accum, step)
            for _ in range(accum):
                t0 = time.time()
                batch = next(batches, None)
                t_data += time.time() - t0
                if batch is None:  # this rank has run out: a zero-weight batch keeps the collectives in step
                    x, y, _ = last_batch
                    n_real = 0
                else:
                    x, y, _ = batch
                    n_real = len(y)
                    last_batch = batch
                y = y.to(info.device, non_blocking=True)
                if phases:
                    phases.start()
                if cache is not None:
                    logits = engine(x.to(info.device, non_blocking=True), cached_from=cache.cut)
                else:  # autocast (bf16) is applied by the engine, see deepspeed_config
                    logits = engine(normalize_uint8(x.to(info.device, non_blocking=True)))
                if n_real:
                    loss_real = loss_fn(logits.float(), y)
                    loss = loss_real * (n_real * accum * info.world / n_step)
                else:
                    loss_real = logits.float().sum() * 0.0
                    loss = loss_real
                bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0])
                all_reduce_sum_(bad, info.device)
                if bad.item() > 0:
                    where = f"epoch {epoch + 1}, step {global_step + 1}"
                    keep = f"; the last good checkpoint is {last_good}" if last_good else "; no checkpoint was written before it"
                    raise NonFiniteLoss(f"loss became NaN/inf at {where} (lr {lr:.3g}); training stopped{keep}")
                if phases:
                    phases.lap("forward")
                engine.backward(loss)
                if phases:
                    phases.lap("backward")
                engine.step()
                if phases:
                    phases.lap("optimizer")
                if n_real:
                    loss_sum += float(loss_real.detach()) * n_real
                    loss_n += n_real
                seen += n_real
            global_step += 1
            # A finite loss can still give inf/NaN weights (huge gradients); never checkpoint those.
            # Weights are identical on every rank after the step, so every rank stops here together.
            if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                keep = f"; the last good checkpoint is {last_good}" if last_good else "; no checkpoint was written before it"
                raise NonFiniteLoss(f"weights became NaN/inf in optimizer step {global_step} (epoch {epoch + 1}, lr {lr:.3g}); "
                                    f"training stopped{keep}")
            if bar is not None:
                elapsed = time.time() - t_epoch
                bar.set_postfix(refresh=False, loss=f"{loss_sum / max(1, loss_n):.3f}", img_s=f"{seen * info.world / max(elapsed, 1e-9):.0f}",
                                data_wait=f"{100 * t_data / max(elapsed, 1e-9):.0f}%")
                bar.update(1)
            if writer is not None and global_step % max(1, cfg.log_every_steps) == 0:
                writer.add_scalar("train/loss", loss_sum / max(1, loss_n), global_step)
                writer.add_scalar("train/lr", lr, global_step)
            if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0 and step + 1 < n_steps:
                last_good = checkpoint.save(run_dir, global_step, model, engine.optimizer,
                                            {"epoch": epoch, "step_in_epoch": step + 1, "global_step": global_step, "run": run_signature}, info.rank,
                                            info.world, cfg.optim.zero_stage, cfg.keep_checkpoints)
            if cfg.max_steps and global_step >= cfg.max_steps:
                stop = True
                break
        if bar is not None:
            bar.close()
        # Drain what this rank did not consume (max_steps / uneven ranks) so the next epoch starts clean.
        for _ in batches:
            pass
        stats = torch.tensor([loss_sum, float(loss_n), float(seen)], dtype=torch.float64)
        all_reduce_sum_(stats, info.device)
        elapsed = time.time() - t_epoch
        epoch_log = {
            "epoch": epoch + 1, "loss": stats[0].item() / max(1.0, stats[1].item()), "lr": lr,
            "samples": int(stats[2].item()), "time_s": elapsed, "samples_per_s": stats[2].item() / max(elapsed, 1e-9),
            "data_wait_share": t_data / max(elapsed, 1e-9), "global_step": global_step,
        }
        if phases:
            epoch_log["phases_s"] = phases.take(data=t_data)
        done_epoch = not stop
        last_good = checkpoint.save(run_dir, global_step, model, engine.optimizer,
                                    {"epoch": epoch + 1 if done_epoch else epoch, "step_in_epoch": 0 if done_epoch else step + 1,
                                     "global_step": global_step, "run": run_signature}, info.rank, info.world, cfg.optim.zero_stage,
                                    cfg.keep_checkpoints)
        if cfg.eval_every_epochs and (epoch + 1) % cfg.eval_every_epochs == 0 and epoch + 1 < cfg.optim.epochs:
            m = evaluate(model, eval_m, counts, resolution=resolution, interpolation=d.interpolation, tte=False,
                         batch_size=d.eval_batch_size, workers=min(d.workers, 2), rank=info.rank, world=info.world,
                         device=info.device, precision=precision)
            epoch_log["eval"] = summary_metrics(m)
        if info.is_main:
            with open(run_dir / "history.jsonl", "a") as f:
                f.write(json.dumps(epoch_log) + "\n")
            writer.add_scalar("train/epoch_loss", epoch_log["loss"], epoch + 1)
            writer.add_scalar("train/samples_per_s", epoch_log["samples_per_s"], epoch + 1)
            for k, v in (epoch_log.get("eval") or {}).items():
                writer.add_scalar(f"val/{k}", v if v is not None else float("nan"), epoch + 1)
        log(info, run_dir, f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {epoch_log['loss']:.4f}, lr {lr:.3g}, "
            f"{epoch_log['samples_per_s']:.1f} img/s, data wait {100 * epoch_log['data_wait_share']:.0f}%, "
            f"{elapsed:.1f}s" + (f", eval {epoch_log['eval']}" if "eval" in epoch_log else ""))
    del loader, batches
    if os.environ.get("LIFT_DIST_COMMS_LOG") == "1":
        # DeepSpeed's own record of every collective it issued: {op: {message bytes: count}}.
        from deepspeed.comm import comm as ds_comm

        comms = {op: {str(size): rec[0] for size, rec in sizes.items()} for op, sizes in ds_comm.comms_logger.comms_dict.items()}
        write_json_atomic(run_dir / f"comms-rank{info.rank}.json", {"optimizer_steps": global_step, "ops": comms})

    train_time = time.time() - t_start
    results = {}
    modes = [("no_tte", False)] + ([("tte", True)] if d.tte else [])
    for mode, tte in modes:
        results[mode] = evaluate(model, eval_m, counts, resolution=resolution, interpolation=d.interpolation, tte=tte,
                                 tte_mode=d.tte_mode, tte_expand=d.tte_expand, batch_size=d.eval_batch_size,
                                 workers=min(d.workers, 2), rank=info.rank, world=info.world, device=info.device,
                                 precision=precision)
    final = results["tte" if d.tte else "no_tte"]
    metrics = summary_metrics(final) | {
        "epochs": cfg.optim.epochs,
        "steps": global_step,
        "trainable_params": report["trainable"],
        "module_params": report["peft"],
        "head_params": report["head"],
        "with_tte": bool(d.tte),
        "world_size": info.world,
        "device": info.device.type,
        "precision": precision,
        "global_batch": cfg.optim.batch_size,
        "micro_batch": micro,
        "accumulation": accum,
        "eval_split": eval_m.split,
        "eval_samples": int(sum(final["per_class_count"])),
        "train_time_s": train_time,
        "model": cfg.model.name,
        "modules": list(cfg.model.peft),
    }
    for mode, m in results.items():
        metrics[mode] = summary_metrics(m)
    if info.is_main:
        write_json_atomic(run_dir / "metrics.json", metrics)
        write_confusions(run_dir / "confusions.parquet", results)
        write_per_class(run_dir / "per_class.parquet", results, train_m.class_names, counts, train_m.groups)
        for k, v in metrics[("tte" if d.tte else "no_tte")].items():
            writer.add_scalar(f"test/{k}", v if v is not None else float("nan"), global_step)
        writer.close()
        log(info, run_dir, "final " + ("(TTE) " if d.tte else "") + ", ".join(
            f"{k} {100 * v:.2f}" if v is not None else f"{k} n/a"
            for k, v in summary_metrics(final).items()))
    dist.barrier()
    return metrics
