"""Distributed training end to end with real torchrun + DeepSpeed (gloo) processes on CPU."""

import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from support.runs import (
    REPO,
    TINY,
    latest_checkpoint,
    latest_weights,
    run_env,
    run_in_process,
    run_side_by_side,
    run_torchrun,
    torchrun_cmd,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lift_dist.config import ModelConfig, load_config
from lift_dist.data import pipeline
from lift_dist.data.jpeg import decode_rgb_draft
from lift_dist.data.manifest import read_manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, decode_sample, make_loader, rebatch
from lift_dist.engine.distributed import DistInfo
from lift_dist.engine.head_setup import init_head
from lift_dist.errors import DataError
from lift_dist.head_init import class_mean_weights, semantic_weights
from lift_dist.model.backbone import get_tokenizer
from lift_dist.model.lift_model import build_model
from lift_dist.shards import build_image_folder
from lift_dist.shards.synthetic import photo_jpegs
from lift_dist.synthetic import write_image_folder
from lift_dist.transforms import plain_transform


@pytest.mark.slow
def test_two_rank_run_end_to_end(demo_shards, tmp_path):
    run = tmp_path / "run"
    run_torchrun(2, "--shards", str(demo_shards), "--out", str(run), "--epochs", "3", "--batch-size", "16", *TINY,
                 "--set", "optim.lr=0.05", "--set", "profile_phases=true", "--set", "eval_every_epochs=1")
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("overall", "mean_class", "head", "medium", "tail", "epochs", "trainable_params"):
        assert key in metrics
    assert metrics["epochs"] == 3 and metrics["world_size"] == 2 and metrics["with_tte"] is True
    assert metrics["tte"]["overall"] == metrics["overall"]
    assert metrics["eval_samples"] == 60  # every test image evaluated exactly once across the 2 ranks
    assert 0.0 <= metrics["overall"] <= 1.0
    # Checkpoints hold exactly the trainable tensors (module + head), nothing frozen.
    model, _ = build_model(ModelConfig(name="tiny", peft=["adaptformer"], head_init="random"), 10)
    expected = {n: tuple(p.shape) for n, p in model.trainable_named_parameters()}
    saved = latest_weights(run)
    assert {k: tuple(v.shape) for k, v in saved.items()} == expected
    assert not any(k.startswith("encoder.blocks.0.block.") or "conv1" in k for k in saved)
    assert sum(v.numel() for v in saved.values()) == metrics["trainable_params"]
    assert (run / "config.yaml").is_file() and (run / "per_class.parquet").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    history = _history(run)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert sum(read_manifest(demo_shards, "train").shard_samples) == history[0]["samples"]
    # Mid-run evaluations read the test split, and say so (not "val"): in history.jsonl and TensorBoard.
    assert [h.get("eval_split") for h in history] == ["test", "test", None] and "eval" in history[0]
    events = EventAccumulator(str(next((run / "tensorboard").glob("events.out.tfevents.*")))).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"test/overall", "test/tail", "train/loss", "train/epoch_loss"} <= tags and not any(t.startswith("val/") for t in tags)
    # profile_phases: the step's time split, with DeepSpeed's gradient all-reduce timed apart from backward.
    for h in history:
        t = h["phases_s"]
        assert set(t) == {"data", "forward", "backward", "all_reduce", "optimizer"}
        assert all(v >= 0 for v in t.values()) and t["all_reduce"] > 0 and t["forward"] > 0
        assert sum(t.values()) <= h["time_s"] * 1.01


def test_exact_epoch_mode_sees_every_sample_once(demo_shards):
    m = read_manifest(demo_shards, "train")
    all_keys = []
    for world in (1, 3):
        plan = ShardPlan(len(m.shard_files), m.shard_samples, seed=3, world=world)

        class Epoch:
            value = 0

            def get(self):
                return self.value

        epoch = Epoch()
        orders = []
        for e in (0, 1):
            epoch.value = e
            seen = []
            for rank in range(world):
                stream = ShardStream(m, plan, rank, epoch, lambda img: torch.zeros(1), train=True, num_classes=m.num_classes,
                                     shuffle_buffer=20, seed=3)
                rank_keys = [k for _, _, keys in rebatch(iter(make_loader(stream, 2)), 7) for k in keys]
                assert len(rank_keys) == plan.rank_samples(e, rank)
                seen += rank_keys
            assert len(seen) == m.num_samples and len(set(seen)) == m.num_samples
            orders.append(seen)
            all_keys.append(sorted(seen))
        assert orders[0] != orders[1]  # reshuffled each epoch
    assert all(k == all_keys[0] for k in all_keys)


@pytest.mark.slow
def test_two_ranks_match_one_rank_with_double_batch(tmp_path):
    """One optimizer step on 2 ranks × batch b = 1 rank × batch 2b (and 1 rank × b with 2 accumulation
    steps) on the same 2b samples."""
    b = 6
    write_image_folder(tmp_path / "img", [b, b], size=40, seed=5)
    shards = tmp_path / "shards"
    build_image_folder(tmp_path / "img", shards, "train", shard_size=b, seed=0, progress=False)  # 2 shards of b samples
    build_image_folder(tmp_path / "img", shards, "test", train_counts_from=shards, shard_size=b, seed=0)
    assert read_manifest(shards, "train").shard_samples == [b, b]
    common = ["--shards", str(shards), "--epochs", "1", *TINY, "--workers", "0", "--set", "max_steps=1",
              "--set", "data.augment=none", "--set", "data.tte=false", "--set", "optim.lr=0.5",
              "--set", "data.shuffle_buffer=1", "--batch-size", str(2 * b)]
    run_torchrun(2, *common, "--out", str(tmp_path / "two"), "--set", f"optim.micro_batch_size={b}")
    run_side_by_side(torchrun_cmd(1, *common, "--out", str(tmp_path / "one"), "--set", f"optim.micro_batch_size={2 * b}"),
                     torchrun_cmd(1, *common, "--out", str(tmp_path / "acc"), "--set", f"optim.micro_batch_size={b}"))
    w2, w1, wa = (latest_weights(tmp_path / n) for n in ("two", "one", "acc"))
    assert set(w1) == set(w2) == set(wa)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(wa[k], w1[k], atol=2e-6, rtol=1e-5)
    # The step really moved the weights: AdaptFormer's up-projections start at exactly zero.
    up = [k for k in w1 if k.endswith("up.weight")]
    assert up and all(w1[k].abs().sum() > 0 for k in up)


@pytest.mark.slow
def test_allreduce_bytes_equal_trainable_size(demo_shards, tmp_path):
    run = tmp_path / "comms"
    env = run_env() | {"LIFT_DIST_COMMS_LOG": "1"}
    cmd = torchrun_cmd(2, "--shards", str(demo_shards), "--out", str(run), "--epochs", "1", "--batch-size", "16", *TINY,
                       "--set", "max_steps=3", "--set", "data.tte=false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    comms = json.loads((run / "comms-rank0.json").read_text())
    grad_bytes = sum(int(size) * n for size, n in comms["ops"]["all_reduce"].items() if int(size) > 64)
    assert comms["optimizer_steps"] == 3
    assert grad_bytes == 3 * 4 * metrics["trainable_params"]  # fp32 gradients of trainable tensors only


RESUME_ARGS = ["--epochs", "2", "--batch-size", "8", *TINY, "--set", "checkpoint_every_steps=2",
               "--set", "keep_checkpoints=10", "--set", "deterministic=true"]


@pytest.fixture(scope="module")
def uninterrupted(demo_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    run_torchrun(2, "--shards", str(demo_shards), *RESUME_ARGS, "--out", str(run))
    return run


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _interrupt_and_resume(demo_shards, run: Path, stop) -> None:
    """Start the 2-rank run, stop it with `stop(proc)` once a mid-epoch checkpoint exists, resume it."""
    proc = subprocess.Popen(torchrun_cmd(2, "--shards", str(demo_shards), *RESUME_ARGS, "--out", str(run)), env=run_env(),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((run / "checkpoints").glob("step-00000004")):
        time.sleep(0.2)
    stop(proc)
    proc.wait(timeout=120)
    deadline = time.time() + 120  # ranks that outlived torchrun checkpoint and exit on their own first
    while time.time() < deadline and (run / "lock").exists():
        time.sleep(0.2)
    assert not (run / "metrics.json").exists()
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["epoch"] == 0 and state["step_in_epoch"] > 0  # stopped mid-epoch
    run_torchrun(2, "--shards", str(demo_shards), *RESUME_ARGS, "--out", str(run), "--resume", "latest")


def _same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    for k in ("overall", "mean_class", "head", "medium", "tail"):
        assert ma[k] == mb[k], k
    wa, wb = latest_weights(a), latest_weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0)
    # The interrupted epoch's loss is averaged over all its steps, before and after the resume.
    ha, hb = _history(a), _history(b)
    assert [h["epoch"] for h in hb] == [1, 2] and [h["samples"] for h in hb] == [h["samples"] for h in ha]
    assert [h["loss"] for h in hb] == pytest.approx([h["loss"] for h in ha], rel=1e-6)


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_run(demo_shards, tmp_path, uninterrupted):
    _interrupt_and_resume(demo_shards, tmp_path / "killed", lambda proc: os.killpg(proc.pid, signal.SIGKILL))
    _same_run(uninterrupted, tmp_path / "killed")


@pytest.mark.slow
def test_sigterm_checkpoints_at_once_and_resume_gives_the_same_run(demo_shards, tmp_path, uninterrupted):
    """SIGTERM (Slurm's preemption and time-limit signal) to every process: the ranks agree on the step,
    write a checkpoint there and exit; nothing of the epoch is redone."""
    run = tmp_path / "term"
    _interrupt_and_resume(demo_shards, run, lambda proc: os.killpg(proc.pid, signal.SIGTERM))
    assert "stopped by SIGTERM at epoch 1" in (run / "log.txt").read_text()
    _same_run(uninterrupted, run)


@pytest.mark.slow
def test_ranks_stop_when_torchrun_dies(demo_shards, tmp_path):
    run = tmp_path / "orphans"
    proc = subprocess.Popen(torchrun_cmd(2, "--shards", str(demo_shards), "--out", str(run), *TINY, "--epochs", "50",
                                         "--batch-size", "8", "--set", "data.tte=false"),
                            env=run_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.txt").is_file() and "epoch 1/50" in (run / "log.txt").read_text()):
        time.sleep(0.2)
    def children(pid: int) -> list[int]:
        return [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]

    ranks = children(proc.pid)
    workers = [w for r in ranks for w in children(r)]  # their data-loader processes
    assert len(ranks) == 2 and len(workers) >= 2
    proc.kill()  # SIGKILL: torchrun cannot pass anything on
    proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in ranks + workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks), "ranks kept training without their launcher"
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "loader workers outlived their rank"
    assert "stopped by SIGTERM" in (run / "log.txt").read_text()  # they checkpointed on the way out


@pytest.mark.slow
def test_no_deepspeed_op_is_built_on_cpu_even_with_a_stale_lock(demo_shards, tmp_path):
    """DeepSpeed's CPU shared-memory op used to be JIT-compiled into ~/.cache/torch_extensions at the first
    start; a build killed midway left a lock every later run waited on for ever."""
    ext = tmp_path / "torch_extensions"
    for d in (ext / "deepspeed_shm_comm", ext / "py311_cu130" / "deepspeed_shm_comm"):
        d.mkdir(parents=True)
        (d / "lock").write_text("")  # as a killed build leaves it
    run_torchrun(2, "--shards", str(demo_shards), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1", "--batch-size", "16",
                 "--set", "data.tte=false", timeout=180, env=run_env(TORCH_EXTENSIONS_DIR=str(ext)))
    assert not list(ext.rglob("*.so")) and not list(ext.rglob("build.ninja"))


def test_config_and_data_errors_are_clear(demo_shards, tmp_path):
    p = run_in_process("train", "--shards", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *TINY)
    assert p.returncode == 2 and f"shard directory {tmp_path / 'nope'} does not exist" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "empty").mkdir()
    p = run_in_process("train", "--shards", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *TINY)
    assert p.returncode == 2 and "holds no shard manifests at all" in p.stderr
    # Global batch not divisible by world × micro-batch.
    p = run_in_process("train", "--shards", str(demo_shards), "--out", str(tmp_path / "r"), *TINY, "--batch-size", "10",
                "--set", "optim.micro_batch_size=4")
    assert p.returncode == 2 and "optim.batch_size=10 is not divisible by world size 1 × micro-batch 4" in p.stderr
    assert not (tmp_path / "r").exists()


def test_manifest_shard_mismatch_is_named(demo_shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo_shards, bad)
    victim = sorted(bad.glob("train-*.tar"))[0]
    victim.unlink()
    p = run_in_process("train", "--shards", str(bad), "--out", str(tmp_path / "r"), *TINY)
    assert p.returncode == 2 and "shard(s) that do not exist" in p.stderr and victim.name in p.stderr
    # A shard replaced after the build (other size than listed) stops the run at start-up, named.
    shutil.copy(demo_shards / victim.name, victim)
    victim.write_bytes(victim.read_bytes()[:-10240])  # truncated: the tar's end blocks are gone
    p = run_in_process("train", "--shards", str(bad), "--out", str(tmp_path / "r"), *TINY)
    assert p.returncode == 2 and f"shard {victim} is" in p.stderr and "bytes but its manifest says" in p.stderr, p.stderr


def test_descriptions_that_miss_classes_are_named_before_anything_starts(demo_shards, tmp_path):
    names = read_manifest(demo_shards, "train").class_names
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({names[0]: ["a sentence"], names[1]: "not a list"}))
    p = run_in_process("train", "--shards", str(demo_shards), "--out", str(tmp_path / "r"), *TINY,
                       "--set", "model.prompt=descriptions", "--set", f"model.descriptions={desc}")
    want = f"model.descriptions: {desc}: descriptions lack a non-empty list of sentences for {len(names) - 1} class(es): {names[1]}"
    assert p.returncode == 2 and want in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "r").exists()  # before the run directory, process group and model build


@pytest.mark.parametrize("content, message", [(b"{bad", "is not readable JSON (JSONDecodeError"),
                                              (b"[1, 2]", "must hold a JSON object (the build's summary), not a list")])
def test_a_damaged_split_summary_is_named(demo_shards, tmp_path, content, message):
    bad = tmp_path / "bad"
    shutil.copytree(demo_shards, bad)
    (bad / "train-summary.json").write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{bad / 'train-summary.json'} {message}")):
        read_manifest(bad, "train")
    p = run_in_process("train", "--shards", str(bad), "--out", str(tmp_path / "r"), *TINY)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(demo_shards, tmp_path):
    run = tmp_path / "nan"
    proc = run_torchrun(2, "--shards", str(demo_shards), "--out", str(run), "--epochs", "3", "--batch-size", "16", *TINY,
                        "--set", "optim.lr=1e30", "--set", "model.head=linear", "--set", "model.head_init=random",
                        "--set", "checkpoint_every_steps=1", check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    stop = re.search(r"(loss|weights) became NaN/inf (at|in the optimizer step at) epoch \d+, step (\d+)", out)
    assert stop, out[-3000:]
    assert not (run / "metrics.json").exists()
    # The checkpoint it names is really good: written before the failing step, every tensor finite.
    named = re.search(r"the last good checkpoint is (\S+?)(?:\n|$)", out)
    assert named or "no checkpoint was written before it" in out
    if named:
        ckpt = Path(named.group(1))
        failed_step = int(stop.group(3))
        assert int(ckpt.name.split("-")[1]) < failed_step
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "trainable.safetensors")).values())


@pytest.mark.slow
def test_zero1_matches_zero0_and_resumes_exactly(demo_shards, tmp_path):
    """ZeRO stage 1 (optimizer state partitioned, saved per rank) trains the same weights as stage 0,
    and a run stopped mid-epoch and resumed under stage 1 ends bit-identical."""
    args = ["--shards", str(demo_shards), "--epochs", "2", "--batch-size", "16", *TINY, "--set", "data.tte=false"]
    run_torchrun(2, *args, "--out", str(tmp_path / "z0"), "--set", "optim.zero_stage=0")
    run_torchrun(2, *args, "--out", str(tmp_path / "z1"), "--set", "optim.zero_stage=1")
    run_torchrun(2, *args, "--out", str(tmp_path / "r1"), "--set", "optim.zero_stage=1", "--set", "max_steps=9")
    ckpt = latest_checkpoint(tmp_path / "r1")
    assert sorted(p.name for p in ckpt.glob("optimizer-rank*.json")) == ["optimizer-rank0.json", "optimizer-rank1.json"]
    run_torchrun(2, *args, "--out", str(tmp_path / "r1"), "--set", "optim.zero_stage=1", "--resume", "latest")
    w0, w1, wr = (latest_weights(tmp_path / n) for n in ("z0", "z1", "r1"))
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(wr[k], w1[k], atol=0, rtol=0)


@pytest.mark.slow
def test_fp16_amp_trains_with_a_loss_scaler_and_resumes_exactly(demo_shards, tmp_path):
    """precision=fp16 (the official codes' AMP: fp16 autocast + DeepSpeed's GradScaler) end to end on 2
    ranks: it trains other values than fp32, its scaler's state is checkpointed per rank, and a run
    stopped mid-way and resumed ends bit-identical, its scaler included."""
    args = ["--shards", str(demo_shards), "--epochs", "2", "--batch-size", "16", *TINY, "--set", "data.tte=false"]
    run_torchrun(2, *args, "--out", str(tmp_path / "fp32"))
    run_torchrun(2, *args, "--out", str(tmp_path / "fp16"), "--set", "precision=fp16")
    run_torchrun(2, *args, "--out", str(tmp_path / "stop"), "--set", "precision=fp16", "--set", "max_steps=5")
    run_torchrun(2, *args, "--out", str(tmp_path / "stop"), "--set", "precision=fp16", "--resume", "latest")
    metrics = json.loads((tmp_path / "fp16" / "metrics.json").read_text())
    assert metrics["precision"] == "fp16" and math.isfinite(metrics["overall"])
    w32, w16, wr = (latest_weights(tmp_path / n) for n in ("fp32", "fp16", "stop"))
    assert any(not torch.equal(w16[k], w32[k]) for k in w32)  # fp16 autocast really ran
    for k in w16:
        assert torch.isfinite(w16[k]).all(), k
        torch.testing.assert_close(wr[k], w16[k], atol=0, rtol=0)
    scalers = [json.loads((latest_checkpoint(tmp_path / n) / f"rank-{r}.json").read_text())["tree"]["grad_scaler"]
               for n in ("fp16", "stop") for r in (0, 1)]
    # The resumed run's scaler is the uninterrupted one's: its steps since the last overflow run on.
    assert scalers[0]["_growth_tracker"] > 5 and all(s == scalers[0] for s in scalers)


@pytest.mark.slow
def test_resampled_epochs_and_too_few_shards(demo_shards, tmp_path):
    run = tmp_path / "resampled"
    run_torchrun(2, "--shards", str(demo_shards), "--out", str(run), "--epochs", "2", "--batch-size", "16", *TINY,
                 "--set", "data.epoch_mode=resampled", "--set", "data.tte=false")
    n = read_manifest(demo_shards, "train").num_samples
    history = _history(run)
    # Each rank draws ceil(N / world) samples per epoch (shards with replacement).
    assert [h["samples"] for h in history] == [2 * -(-n // 2)] * 2
    # 6 training shards cannot feed 2 ranks × 4 workers: a clear message instead of a hang.
    proc = run_torchrun(2, "--shards", str(demo_shards), "--out", str(tmp_path / "few"), "--epochs", "1", *TINY,
                        "--workers", "4", check=False)
    assert proc.returncode != 0
    assert "has 6 'train' shard(s) but 2 rank(s) × 4 data worker(s) need at least 8" in proc.stderr + proc.stdout


def test_class_mean_and_semantic_head_init_in_the_trainer(demo_shards):
    """The trainer's distributed class-mean init (sums + counts, up to 100 images per class) equals
    head_init.class_mean_weights on the same features; semantic init equals semantic_weights."""
    cfg = load_config(None, None, ["model.name=tiny", "model.pretrained=null", "model.head_init=class_mean"])
    m = read_manifest(demo_shards, "train")
    model, clip = build_model(cfg.model, m.num_classes)
    info = DistInfo(0, 1, 0, torch.device("cpu"), "gloo", "single")
    init_head(model, clip, cfg, info, m, 64)
    # The official `transform_plain` (Resize + CenterCrop, not the test transform's 8/7 resize).
    stream = ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), plain_transform(64),
                         train=False, num_classes=m.num_classes)
    xs, ys = zip(*[(x, y) for x, y, _ in rebatch(iter(make_loader(stream, 0)), 64)])
    with torch.no_grad():
        feats = model.features(torch.cat(xs))
    expected = class_mean_weights(feats, torch.cat(ys), m.num_classes)
    torch.testing.assert_close(model.head.weight.detach(), expected, atol=1e-5, rtol=1e-4)
    # A cap below the head classes' counts: the first 7 images of each class in stream order (LIFT+'s
    # 100), although one batch of 64 holds many more of the head classes.
    cfg.model.head_init_images = 7
    init_head(model, clip, cfg, info, m, 64)
    y = torch.cat(ys)
    first = torch.tensor([int((y[:i] == c).sum()) < 7 for i, c in enumerate(y.tolist())])
    assert int(first.sum()) == int(torch.minimum(torch.bincount(y), torch.tensor(7)).sum()) < len(y)
    expected = class_mean_weights(feats[first], y[first], m.num_classes)
    torch.testing.assert_close(model.head.weight.detach(), expected, atol=1e-5, rtol=1e-4)

    cfg.model.head_init = "semantic"
    init_head(model, clip, cfg, info, m, 64)
    expected = semantic_weights(clip, get_tokenizer("tiny"), m.class_names)
    torch.testing.assert_close(model.head.weight.detach(), expected, atol=1e-6, rtol=1e-5)


def test_jpeg_draft_decoding_keeps_enough_pixels():
    buf = io.BytesIO()
    Image.new("RGB", (800, 600), (120, 30, 200)).save(buf, "JPEG")
    sample = {"__key__": "k", "jpg": buf.getvalue(), "cls": b"3"}
    full, label, _ = decode_sample(sample, 10)
    assert full.size == (800, 600) and label == 3
    small, _, _ = decode_sample(sample, 10, min_side=256)
    assert small.size == (400, 300)  # 1/2 scale: the smallest DCT scale keeping the shorter side >= 256
    assert decode_sample(sample, 10, min_side=400)[0].size == (800, 600)  # 1/2 would drop below 400
    png = io.BytesIO()
    Image.new("RGB", (800, 600)).save(png, "PNG")
    assert decode_sample({"__key__": "p", "png": png.getvalue(), "cls": b"0"}, 10, min_side=256)[0].size == (800, 600)


def test_tensor_decoding_equals_pil(monkeypatch):
    """The training stream decodes JPEGs with TorchCodec (libjpeg-turbo, like PIL): same pixels for
    every JPEG flavour, draft mode where it helps, and corrupt bytes named."""
    calls = []  # which images reach the tensor JPEG decoder (the others go through PIL)
    decoder = pipeline._jpeg_decoder()
    monkeypatch.setattr(pipeline, "_decode_jpeg", lambda data: calls.append(len(data)) or decoder(data))
    photo = Image.open(io.BytesIO(next(iter(photo_jpegs(1, 341, 256, seed=1))))).convert("RGB")
    variants = {}
    for name, kw in {"baseline": {}, "progressive": {"progressive": True}, "exif": {"exif": Image.Exif()},
                     "grey": {}, "cmyk": {}}.items():
        img = photo.convert("L") if name == "grey" else photo.convert("CMYK") if name == "cmyk" else photo
        if name == "exif":
            kw["exif"][0x010F] = "camera maker"  # an APP1 segment before the frame header
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, **kw)
        variants[name] = buf.getvalue()
    for name, data in variants.items():
        sample = {"__key__": name, "jpg": data, "cls": b"1"}
        ref, _, _ = decode_sample(sample, 2)
        out, label, _ = decode_sample(sample, 2, as_tensor=True)
        assert label == 1 and out.dtype == torch.uint8
        assert torch.equal(out, torch.from_numpy(np.array(ref)).permute(2, 0, 1)), name
    assert calls == [len(d) for d in variants.values()]
    png = io.BytesIO()
    photo.save(png, "PNG")
    out, _, _ = decode_sample({"__key__": "p", "png": png.getvalue(), "cls": b"0"}, 2, as_tensor=True)
    assert torch.equal(out, torch.from_numpy(np.array(photo)).permute(2, 0, 1))

    big = io.BytesIO()
    Image.new("RGB", (800, 600), (120, 30, 200)).save(big, "JPEG")
    small, _, _ = decode_sample({"__key__": "b", "jpg": big.getvalue(), "cls": b"0"}, 2, min_side=256, as_tensor=True)
    assert small.shape == (3, 300, 400)  # draft mode at 1/2 scale, as on the PIL path
    assert len(calls) == len(variants)  # the PNG and the drafted JPEG did not reach the full-size decoder
    # Drafted RGB JPEGs go from libjpeg-turbo straight to an array: PIL's draft pixels. Grey and CMYK ones go through PIL.
    drafted = []  # (requested size, decoded there)

    def spy(*a):
        hwc = decode_rgb_draft(*a)
        drafted.append((a[2], hwc is not None))
        return hwc

    monkeypatch.setattr(pipeline, "decode_rgb_draft", spy)
    photo800 = Image.open(io.BytesIO(photo_jpegs(1, 800, 600, seed=2)[0]))
    for name, img in {"rgb": photo800, "grey": photo800.convert("L"), "cmyk": photo800.convert("CMYK")}.items():
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        sample = {"__key__": name, "jpg": buf.getvalue(), "cls": b"0"}
        ref, out = decode_sample(sample, 2, min_side=256)[0], decode_sample(sample, 2, min_side=256, as_tensor=True)[0]
        assert out.shape == (3, 300, 400) and torch.equal(out, torch.from_numpy(np.array(ref)).permute(2, 0, 1)), name
    assert drafted == [((341, 256), True), ((341, 256), False), ((341, 256), False)]  # grey and CMYK: PIL's
    with pytest.raises(DataError, match=r"sample 't' in .*cannot be decoded \(RuntimeError: Image is incomplete or truncated"):
        decode_sample({"__key__": "t", "jpg": variants["baseline"][:2000], "cls": b"0"}, 2, as_tensor=True)

    # Without TorchCodec, torchvision's decoder takes over with the same pixels.
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    fallback = pipeline._jpeg_decoder()
    for data in variants.values():
        assert torch.equal(fallback(bytearray(data)), pipeline._decode_tensor(data, None))
