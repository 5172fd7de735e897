"""Checkpoints of trainable tensors only, written atomically, read back as data only, verified.

    RUN/checkpoints/step-00000420/
        trainable.safetensors          every trainable tensor (modules + head), nothing frozen
        optimizer-rank{r}.{safetensors,json}   optimizer state (rank 0 under ZeRO 0, every rank's shard under ZeRO 1)
        rank-{r}.{safetensors,json}    RNG states and the epoch's running sums (loss, samples) of rank r
        state.json                     epoch, position in the epoch, global step, run id, the run's layout
        manifest.json                  size and sha256 of every file above (written last)
    RUN/checkpoints/latest             name of the newest complete checkpoint

Every rank writes into `step-XXXXXXXX.tmp/`; after a barrier rank 0 writes the manifest, renames the
directory and rewrites `latest` (renames are atomic), so a crash never leaves a checkpoint that looks
complete. A checkpoint is used only when every file matches its manifest; with `resume=latest` a
damaged newest checkpoint gives way, with a note, to the newest complete one. Pruning removes only
older checkpoints of the same run (run id), never the one `latest` names.
Checkpoints of lift-dist 0.1 (no manifest, optimizer-rank{r}.pt, rng-rank{r}.pt) still resume: their
optimizer state is read with `torch.load(weights_only=True)` (tensors and plain values only, never
code) and their pickled RNG files are not read at all (augmentation is seeded per sample, so the data
order does not depend on them).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from lift_dist.engine.statefile import load_state, save_state
from lift_dist.errors import DataError, RunDirError
from lift_dist.run_dir import RunDir, fsync_dir, fsync_files, write_atomic

FORMAT = 2
LATEST = "latest"
TRAINABLE, STATE, MANIFEST = "trainable.safetensors", "state.json", "manifest.json"
LEGACY_OPTIMIZER = "optimizer-rank0.pt"


ASIDE = ".replaced"  # suffix of a step's previous checkpoint while the step is saved again


def dir_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(path: Path) -> int | None:
    name = Path(path).name
    name = name.removesuffix(ASIDE)  # a checkpoint moved aside while its step was saved again: still one
    if not name.startswith("step-") or name.endswith(".tmp"):
        return None
    digits = name[len("step-"):]
    return int(digits) if digits.isdigit() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(state["numpy"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- reading and verifying ---------------------------------------------------------------------

@dataclass
class Checkpoint:
    path: Path
    state: dict
    legacy: bool = False  # written by lift-dist 0.1

    @property
    def step(self) -> int:
        return int(self.state["global_step"])


def verify(path: Path) -> Checkpoint:
    """The checkpoint at `path` if every file matches its manifest; else a DataError naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"checkpoint {path} does not exist")
    if (path / LEGACY_OPTIMIZER).is_file() and not (path / MANIFEST).is_file():
        return _legacy(path)
    manifest_file = path / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise DataError(f"{manifest_file} is missing: the checkpoint is incomplete") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{manifest_file} is damaged ({type(e).__name__}: {e})") from None
    _check_manifest_entries(manifest_file, files)
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            raise DataError(f"{f} is missing from the checkpoint")
        if f.stat().st_size != want["bytes"] or _sha256(f) != want["sha256"]:
            raise DataError(f"{f} is damaged: its size or sha256 differs from {manifest_file}")
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path / STATE} is not readable JSON ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path / STATE} is not a lift-dist checkpoint state of format {FORMAT}")
    _check_state(path / STATE, state)
    for rank_file in sorted(path.glob("rank-*.json")):  # every rank's RNG, before any rank starts
        saved = load_state(rank_file.with_suffix(""))
        _check_rng(saved.get("rng") if isinstance(saved, dict) else None, rank_file)
    return Checkpoint(path, state)


def _check_manifest_entries(manifest_file: Path, files) -> None:
    ok = isinstance(files, dict) and all(
        isinstance(name, str) and "/" not in name and name not in ("", ".", "..") and isinstance(want, dict)
        and type(want.get("bytes")) is int and isinstance(want.get("sha256"), str) for name, want in files.items())
    if not ok:
        raise DataError(f"{manifest_file} is damaged: 'files' must map each file name of the checkpoint to its bytes and sha256")


def _check_state(state_file: Path, state: dict) -> None:
    for key in ("epoch", "step_in_epoch", "global_step"):
        v = state.get(key)
        if type(v) is not int or v < 0:
            raise DataError(f"{state_file}: '{key}' is {v!r}; it must be an integer >= 0")
    if not isinstance(state.get("run", {}), dict):
        raise DataError(f"{state_file}: 'run' must be an object of the run's settings, not {type(state['run']).__name__}")


def _check_rng(rng, rank_file: Path) -> None:
    """The saved generator states are applied to throwaway generators: what they refuse is named here."""
    try:
        torch.Generator().set_state(rng["torch"])
        np.random.RandomState().set_state(tuple(rng["numpy"]))
        py = rng["python"]
        random.Random().setstate((py[0], tuple(py[1]), py[2]))
    except Exception as e:  # KeyError, TypeError, IndexError, ValueError, RuntimeError from the generators
        raise DataError(f"{rank_file}: 'rng' is not a saved random-generator state ({type(e).__name__}: {str(e)[:200]})") from None


def _legacy(path: Path) -> Checkpoint:
    for name in (TRAINABLE, STATE):
        if not (path / name).is_file():
            raise DataError(f"{path / name} is missing: the checkpoint is incomplete")
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path / STATE} is not readable JSON ({e})") from None
    return Checkpoint(path, state, legacy=True)


def _legacy_optimizer_state(f: Path):
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain values
        raise DataError(f"{f} cannot be read as data only ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def candidates(run: RunDir) -> list[Path]:
    """Complete-looking checkpoint directories of a run, newest step first."""
    if not run.checkpoints.is_dir():
        return []
    steps = [(step_of(p), p) for p in run.checkpoints.iterdir() if p.is_dir()]
    steps = [(s, p) for s, p in steps if s is not None]  # of one step, the one in place before the one moved aside
    return [p for _, p in sorted(steps, key=lambda sp: (sp[0], not sp[1].name.endswith(ASIDE)), reverse=True)]


def latest_name(run: RunDir) -> str | None:
    pointer = run.checkpoints / LATEST
    try:
        return pointer.read_text().strip() or None
    except OSError:
        return None


def resolve(run: RunDir, resume: str, log=print, what: str = "resume=latest") -> Checkpoint | None:
    """The checkpoint to resume from: `latest` -> the one `latest` names if it verifies, else (saying
    so) the newest complete one; None when the run has none yet. A path must verify itself."""
    if resume != LATEST:
        return verify(Path(resume))
    named = latest_name(run)
    problems = []
    order = candidates(run)
    if named:
        order = sorted(order, key=lambda p: p.name.removesuffix(ASIDE) != named)  # the named one first, then newest first
        if not any(p.name.removesuffix(ASIDE) == named for p in order):  # never a silent fresh start
            problems.append(f"{run.checkpoints / LATEST} names {named}, which is not there (delete {LATEST} to start afresh)")
    for p in order:
        try:
            ckpt = verify(p)
        except DataError as e:
            problems.append(str(e))
            continue
        if problems:
            log(f"{what}: {problems[0]}; using the newest complete checkpoint {p} instead")
        return ckpt
    if problems:
        raise DataError(f"{what}: no complete checkpoint in {run.checkpoints}; {problems[0]}")
    return None


def weights_path(run: RunDir, which: str | None = None) -> Path:
    """The checkpoint whose weights inference uses: `which` (a directory) or the run's latest complete one."""
    if which:
        return verify(Path(which)).path
    ckpt = resolve(run, LATEST, log=lambda msg: None, what="the run's latest checkpoint")
    if ckpt is None:
        raise DataError(f"{run.path} has no checkpoint yet")
    return ckpt.path


def load_trainable(path: Path) -> dict[str, torch.Tensor]:
    f = Path(path) / TRAINABLE
    try:
        tensors = load_file(str(f))
    except FileNotFoundError:
        raise DataError(f"{f} does not exist") from None
    except Exception as e:
        raise DataError(f"cannot read {f}: {type(e).__name__}: {e}") from None
    # Training never saves a non-finite step (StepGuard): such values were put there, and would predict NaN.
    bad = next((k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise DataError(f"{f}: tensor {bad} holds NaN or infinite values; use an earlier checkpoint (--checkpoint DIR)")
    return tensors


# ---- the checkpointer ---------------------------------------------------------------------------

class Checkpointer:
    """Saves and restores one run's checkpoints (every rank calls save/load together)."""

    def __init__(self, run: RunDir, rank: int, world: int, zero_stage: int, keep: int, run_id: str):
        self.run, self.rank, self.world, self.zero_stage, self.keep, self.run_id = run, rank, world, zero_stage, keep, run_id

    def _writes_optimizer(self) -> bool:
        return self.rank == 0 or self.zero_stage > 0

    def save(self, step: int, model, optimizer, state: dict, rank_state: dict) -> Path:
        root = self.run.checkpoints
        final, tmp = root / dir_name(step), root / (dir_name(step) + ".tmp")
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        dist.barrier()
        if self.rank == 0:
            tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.trainable_state_dict().items()}
            save_file(tensors, str(tmp / TRAINABLE), metadata={"format": "lift-dist", "step": str(step)})
            write_atomic(tmp / STATE, json.dumps({"format": FORMAT, "run_id": self.run_id, **state}, indent=2))
        if self._writes_optimizer():
            save_state(optimizer.state_dict(), tmp / f"optimizer-rank{self.rank}")
        save_state({"rng": rng_state(), **rank_state}, tmp / f"rank-{self.rank}")
        dist.barrier()
        if self.rank == 0:
            self._finish(tmp, final)
        dist.barrier()
        return final

    def _finish(self, tmp: Path, final: Path) -> None:
        files = {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(tmp.iterdir()) if f.is_file()}
        write_atomic(tmp / MANIFEST, json.dumps({"format": FORMAT, "files": files}, indent=2))
        fsync_files(tmp)  # on disk before `latest` may name it, and before _prune deletes older ones
        if final.exists():  # this step saved again (a stop right after a save or a resume): the old copy
            # stays a candidate, moved aside, until the new one is in place
            aside = final.with_name(final.name + ASIDE)
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(final, aside)
            os.replace(tmp, final)
            shutil.rmtree(aside)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
        write_atomic(self.run.checkpoints / LATEST, final.name + "\n")
        self._prune(final)

    def _prune(self, newest: Path) -> None:
        """Keep the `keep` newest checkpoints of this run; never another run's, never `latest`'s."""
        mine = []
        for p in candidates(self.run):
            try:
                if json.loads((p / STATE).read_text()).get("run_id") == self.run_id:
                    mine.append(p)
            except (OSError, ValueError):
                continue
        protected = {newest.name, latest_name(self.run)}
        for old in (mine[self.keep:] if self.keep > 0 else []):
            if old.name not in protected:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.run.checkpoints.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, ckpt: Checkpoint, model, optimizer) -> dict:
        """Restore weights, optimizer state and RNG; returns this rank's saved rank state (running sums)."""
        path = ckpt.path
        model.load_trainable_state_dict(load_trainable(path), source=str(path))
        stem = path / f"optimizer-rank{self.rank if self.zero_stage > 0 else 0}"
        if ckpt.legacy:
            sd = _legacy_optimizer_state(stem.with_name(stem.name + ".pt"))
        elif not stem.with_name(stem.name + ".json").is_file():
            raise DataError(f"{stem}.json is missing: the checkpoint was written with another world size or ZeRO stage")
        else:
            sd = load_state(stem, like=optimizer.state_dict())
        load_optimizer_state(optimizer, [sd if r == self.rank else None for r in range(self.world)] if self.zero_stage > 0 else sd)
        rank_file = path / f"rank-{self.rank}"
        if ckpt.legacy or not rank_file.with_name(rank_file.name + ".json").is_file():
            return {}  # a checkpoint of a run with fewer ranks: this rank starts its RNG afresh
        saved = load_state(rank_file)
        set_rng_state(saved.pop("rng"))
        return saved


def load_optimizer_state(optimizer, state) -> None:
    """Restore an optimizer's state but keep the kernels it was built with: torch's load_state_dict also
    takes the saved groups' `foreach` / `fused`, so a checkpoint written before build_optimizer chose
    foreach would switch a resumed run back to the per-tensor loop (same values, slower)."""
    kernels = [{k: g[k] for k in ("foreach", "fused") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, chosen in zip(optimizer.param_groups, kernels):
        group.update(chosen)


def check_resumable(ckpt: Checkpoint, signature: dict) -> None:
    """Refuse a resume on other data or another model at any point, one whose optimizer files this world
    size and ZeRO stage cannot read, or one mid-epoch with another data order / step layout."""
    saved = ckpt.state.get("run") or {}
    data_keys = ("train_shards", "num_classes", "class_names")
    diff = [k for k in data_keys if k in saved and saved[k] != signature.get(k)]
    if diff:
        raise RunDirError(f"{ckpt.path} was trained on other data ({', '.join(diff)} differ from the shards given now); "
                          "resume with the original shards, or start a new run directory")
    model_diff = [f"model.{k} {json.dumps(v)} -> {json.dumps(signature['model'].get(k))}"
                  for k, v in (saved.get("model") or {}).items() if v != signature["model"].get(k)]
    if model_diff:
        raise RunDirError(f"{ckpt.path} was trained with another model ({'; '.join(model_diff)}); resume with the run's own "
                          f"settings (--config {ckpt.path.parents[1] / 'config.yaml'}), or start a new run directory")
    _check_optimizer_files(ckpt, signature)
    if ckpt.state.get("step_in_epoch", 0) > 0:  # at an epoch boundary nothing can be skipped or repeated
        diff = [f"{k} {saved[k]} -> {signature[k]}" for k in signature if k not in data_keys and k != "model" and k in saved
                and saved[k] != signature[k]]
        if diff:
            raise RunDirError(f"{ckpt.path} was written mid-epoch by a run with other settings ({'; '.join(diff)}); resuming "
                              "would skip or repeat samples. Resume with the original settings, or start a new run directory")


def _check_optimizer_files(ckpt: Checkpoint, signature: dict) -> None:
    """ZeRO > 0 keeps one optimizer shard per rank: each rank of this run needs its own file."""
    if ckpt.legacy or "zero_stage" not in signature:
        return
    zero, world = signature["zero_stage"], signature["world_size"]
    saved = (ckpt.state.get("run") or {}).get("zero_stage", zero)
    if saved != zero:  # the optimizer state of one stage is not laid out as the other's
        raise RunDirError(f"{ckpt.path} was written with optim.zero_stage={saved}, and this run has {zero}; "
                          "resume with the original stage, or start a new run directory")
    saved_world = (ckpt.state.get("run") or {}).get("world_size", world)
    if zero > 0 and saved_world != world:  # each rank's optimizer shard is its slice of the world's
        raise RunDirError(f"{ckpt.path} holds the ZeRO-{zero} optimizer shards of {saved_world} rank(s), and this run has "
                          f"{world}; resume with {saved_world} rank(s), or start a new run directory")
    for rank in range(world) if zero > 0 else [0]:
        f = ckpt.path / f"optimizer-rank{rank}.json"
        if not f.is_file():
            raise RunDirError(f"{ckpt.path} holds no {f.name}: it was written with another world size or ZeRO stage "
                              f"(now {world} rank(s), zero_stage {zero}); resume with the original ones")
