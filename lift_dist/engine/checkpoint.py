"""Checkpoints of trainable tensors only, written atomically.

    RUN/checkpoints/step-00000420/
        trainable.safetensors     every trainable tensor (modules + head), nothing frozen
        optimizer-rank{r}.pt      optimizer state (rank 0 only under ZeRO 0; each rank's shard under ZeRO 1)
        rng-rank{r}.pt            torch / numpy / python RNG states
        state.json                step, epoch, position in the epoch, the run's data/step layout
    RUN/checkpoints/latest        name of the newest complete checkpoint

Every rank writes into `step-XXXXXXXX.tmp/`; after a barrier rank 0 renames it and rewrites `latest`
(rename is atomic), so a crash never leaves a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from lift_dist.errors import DataError

LATEST = "latest"


def _dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save(run_dir: Path, step: int, model, optimizer, state: dict, rank: int, world: int, zero_stage: int, keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / _dir_name(step)
    tmp = ckpt_root / (_dir_name(step) + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    if rank == 0:
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.trainable_state_dict().items()}
        save_file(tensors, str(tmp / "trainable.safetensors"), metadata={"format": "lift-dist", "step": str(step)})
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if rank == 0 or zero_stage > 0:
        torch.save(optimizer.state_dict(), tmp / f"optimizer-rank{rank}.pt")
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    with open(tmp / f"rng-rank{rank}.pt", "wb") as f:
        pickle.dump(rng, f)  # our own file, read back only by us
    dist.barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = ckpt_root / (LATEST + ".tmp")
        pointer.write_text(final.name + "\n")
        os.replace(pointer, ckpt_root / LATEST)
        _prune(ckpt_root, keep)
    dist.barrier()
    return final


def _prune(ckpt_root: Path, keep: int) -> None:
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def resolve(run_dir: Path, resume: str) -> Path | None:
    """'latest' -> newest complete checkpoint of the run (None if there is none yet); else a path."""
    if resume == "latest":
        pointer = Path(run_dir) / "checkpoints" / LATEST
        if not pointer.is_file():
            return None
        path = pointer.parent / pointer.read_text().strip()
    else:
        path = Path(resume)
    if not (path / "trainable.safetensors").is_file() or not (path / "state.json").is_file():
        raise DataError(f"{path} is not a complete lift-dist checkpoint (needs trainable.safetensors and state.json)")
    return path


def check_same_run(path: Path, saved: dict | None, current: dict) -> None:
    """Refuse a resume whose data order or step layout differs from the checkpoint's run."""
    if not saved:
        return  # written before run signatures existed
    diff = [f"{k} {saved[k]} -> {current[k]}" for k in current if k in saved and saved[k] != current[k]]
    if diff:
        raise DataError(
            f"{path} was written by a run with other settings ({'; '.join(diff)}); resuming would skip or repeat "
            "samples. Resume with the original settings, or start a new run directory"
        )


def load_trainable(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(Path(path) / "trainable.safetensors"))
    except Exception as e:
        raise DataError(f"cannot read {Path(path) / 'trainable.safetensors'}: {e}") from None


def load(path: Path, model, optimizer, rank: int, zero_stage: int) -> dict:
    model.load_trainable_state_dict(load_trainable(path), source=str(path))
    opt_file = path / f"optimizer-rank{rank if zero_stage > 0 else 0}.pt"
    if not opt_file.is_file():
        raise DataError(f"{opt_file} is missing: the checkpoint was written with another world size or ZeRO stage")
    sd = torch.load(opt_file, map_location="cpu", weights_only=False)
    if zero_stage > 0:
        world = dist.get_world_size()
        optimizer.load_state_dict([sd if r == dist.get_rank() else None for r in range(world)])
    else:
        optimizer.load_state_dict(sd)
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        with open(rng_file, "rb") as f:
            rng = pickle.load(f)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return json.loads((path / "state.json").read_text())
