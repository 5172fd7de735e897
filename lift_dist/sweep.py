"""Ray Tune sweeps over the lightweight module, its size (r or α), the head scale σ and the learning rate.

Every trial is an ordinary training run (a local `python -m lift_dist.train` process, or a Slurm job
through the launcher) whose per-epoch validation metrics are read from its `history.jsonl` and
reported to Tune. The objective is measured on a validation split held out from the TRAINING shards
(up to `val_per_class` images of every class, seeded), never on the test set; the best trial's
checkpoint is evaluated on the test split afterwards and reported separately.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lift_dist.errors import ConfigError, DataError

SIZED_BY_R = ("adaptformer", "adapter", "lora")
DEFAULT_SPACE = {
    "module": {"choice": ["adaptformer", "sparse"]},
    "alpha": {"loguniform": [1e-3, 1e-1]},  # used by `sparse`
    "r": {"choice": [4, 8, 16, 32, 64, 128, 256, 512]},  # used by adaptformer / adapter / lora
    "scale": {"uniform": [15.0, 35.0]},
    "lr": {"loguniform": [3e-3, 5e-2]},
}
KINDS = ("choice", "uniform", "loguniform", "randint")
METRICS = ("overall", "mean_class", "head", "medium", "tail")


# ---- search space -----------------------------------------------------------------------------

def load_space(path: str | None) -> dict:
    """Default space, restricted or extended by a YAML file (`key: null` removes a dimension)."""
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"space file {p} does not exist")
        user = yaml.safe_load(p.read_text()) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{p}: the space must be a mapping of key -> {{kind: values}}")
        for k, v in user.items():
            if v is None:
                space.pop(k, None)
            else:
                space[k] = v if isinstance(v, dict) else {"choice": v if isinstance(v, list) else [v]}
    validate_space(space)
    return space


def validate_space(space: dict) -> None:
    from lift_dist.peft import REGISTRY

    for key, spec in space.items():
        if key not in DEFAULT_SPACE:
            raise ConfigError(f"unknown search dimension '{key}'; valid: {', '.join(DEFAULT_SPACE)}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"'{key}': give exactly one of {', '.join(KINDS)}, e.g. {key}: {{choice: [...]}}")
        kind, values = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(values, list) or not values:
                raise ConfigError(f"'{key}': choice needs a non-empty list")
        else:
            if not isinstance(values, list) or len(values) != 2 or not values[0] < values[1]:
                raise ConfigError(f"'{key}': {kind} needs [low, high] with low < high, got {values}")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"'{key}': loguniform needs a positive lower bound, got {values[0]}")
        lo_hi = values if kind != "choice" else [min(values), max(values)] if key != "module" else None
        if key == "alpha" and lo_hi and not (0 < lo_hi[0] and lo_hi[1] <= 1):
            raise ConfigError(f"'alpha': the sparse fraction must lie in (0, 1], got {values}")
        if key == "r" and lo_hi and lo_hi[0] < 1:
            raise ConfigError(f"'r': bottleneck sizes must be >= 1, got {values}")
        if key == "module":
            bad = [m for m in values if m not in REGISTRY]
            if bad:
                raise ConfigError(f"'module': unknown module '{bad[0]}'; valid: {', '.join(sorted(REGISTRY))}")


def to_tune(space: dict) -> dict:
    from ray import tune

    out = {}
    for key, spec in space.items():
        kind, v = next(iter(spec.items()))
        out[key] = {"choice": lambda v: tune.choice(v), "uniform": lambda v: tune.uniform(*v),
                    "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}[kind](v)
    return out


def trial_overrides(params: dict) -> list[str]:
    """Training overrides for one point of the space (r only with r-sized modules, α only with sparse)."""
    module = params.get("module", "adaptformer")
    out = [f"model.peft=[{module}]"]
    if "r" in params and module in SIZED_BY_R:
        out.append(f"model.r={int(params['r'])}")
    if "alpha" in params and module == "sparse":
        out.append(f"model.alpha={float(params['alpha'])}")
    if "scale" in params:
        out.append(f"model.scale={float(params['scale'])}")
    if "lr" in params:
        out.append(f"optim.lr={float(params['lr'])}")
    return out


# ---- held-out validation split ------------------------------------------------------------------

def make_holdout(shards: Path, out: Path, split: str, val_per_class: int, seed: int) -> Path:
    """Write `out/train` and `out/val` shard sets from `shards/{split}`: up to `val_per_class` images
    per class (never more than half of a class) go to val. Image bytes are copied, not re-encoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from lift_dist.data import manifest as mf
    from lift_dist.data.manifest import read_manifest

    done = out / "holdout.json"
    if done.is_file() and json.loads(done.read_text()).get("source") == str(shards.resolve()):
        return out
    m = read_manifest(shards, split)
    keys_by_class: dict[int, list[str]] = {}
    for url in m.shard_files:
        for s in wds.WebDataset(str(url), shardshuffle=False, empty_check=False):
            keys_by_class.setdefault(int(s["cls"].decode()), []).append(s["__key__"])
    rng = random.Random(seed)
    val_keys = set()
    for c, keys in sorted(keys_by_class.items()):
        keys = sorted(keys)
        rng.shuffle(keys)
        val_keys.update(keys[: min(val_per_class, len(keys) // 2)])
    if not val_keys:
        raise DataError(f"{shards}: no class has 2 or more training images; nothing can be held out for validation")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    counts = {"train": [0] * m.num_classes, "val": [0] * m.num_classes}
    # As many training shards as the source has, so the same ranks × workers can read them.
    sizes = {"train": math.ceil((m.num_samples - len(val_keys)) / len(m.shard_files)),
             "val": math.ceil(len(val_keys) / len(m.shard_files))}
    writers = {s: wds.ShardWriter(str(out / f"{s}-%06d.tar"), maxcount=max(1, sizes[s]), verbose=0) for s in ("train", "val")}
    for url in m.shard_files:
        for s in wds.WebDataset(str(url), shardshuffle=False, empty_check=False):
            part = "val" if s["__key__"] in val_keys else "train"
            counts[part][int(s["cls"].decode())] += 1
            writers[part].write({k: v for k, v in s.items() if k in ("__key__", "jpg", "cls", "json")})
    for w in writers.values():
        w.close()
    import hashlib

    for part in ("train", "val"):
        files = sorted(out.glob(f"{part}-*.tar"))
        rows = {"path": [], "num_samples": [], "bytes": [], "sha256": []}
        for f in files:
            n = sum(1 for _ in wds.WebDataset(str(f), shardshuffle=False, empty_check=False))
            rows["path"].append(f.name)
            rows["num_samples"].append(n)
            rows["bytes"].append(f.stat().st_size)
            rows["sha256"].append(hashlib.sha256(f.read_bytes()).hexdigest())
        pq.write_table(pa.table(rows), mf.shards_path(out, part))
        train_counts = counts["train"]
        pq.write_table(pa.table({
            "label": list(range(m.num_classes)), "name": m.class_names, "count": train_counts,
            "group": [mf.group_of(n) for n in train_counts],
        }), mf.classes_path(out, part))
    done.write_text(json.dumps({"source": str(shards.resolve()), "split": split, "val_per_class": val_per_class,
                                "seed": seed, "train": sum(counts["train"]), "val": sum(counts["val"])}))
    return out


# ---- the trial -----------------------------------------------------------------------------------

def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _die_with_parent() -> None:
    """In a trial's training process: get SIGTERM when the Ray worker that started it dies (a killed
    driver must not leave trainings running that a resumed sweep would then race with)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# A recorded job in any other state (pending, running, requeued, suspended, ...) is still this trial's.
FINISHED_SLURM_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                         "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT")


def make_trainable():
    from ray import tune

    class LiftTrial(tune.Trainable):
        """One training run; each Tune iteration is one epoch of it."""

        def setup(self, config: dict):
            self.params = {k: v for k, v in config.items() if not k.startswith("_")}
            self.base_args: list[str] = config["_train_args"]
            self.backend: str = config["_backend"]
            self.launch_args: list[str] = config.get("_launch_args", [])
            self.metric: str = config["_metric"]
            self.epochs: int = config["_epochs"]
            self.cpus = max(1, int(config.get("_cpus") or 1))
            # Runs live under SWEEP/runs/<trial id>, not in Ray's (possibly staged) trial directory.
            self.run_dir = Path(config["_runs_root"]) / self.trial_id
            self.proc = self.job = None
            self.reported = 0
            # A retried or restored trial gets the same run dir and goes on from its checkpoint; a finished
            # one is not run again.
            if not (self.run_dir / "metrics.json").is_file():
                self._launch(resume=True)

        def _argv(self, resume: bool) -> list[str]:
            argv = [*self.base_args, "--out", str(self.run_dir), "--set", "eval_every_epochs=1", "--set", "data.tte=false"]
            for o in trial_overrides(self.params):
                argv += ["--set", o]
            return argv + (["--resume", "latest"] if resume else [])

        def _launch(self, resume: bool):
            if self.backend == "local":
                self.run_dir.mkdir(parents=True, exist_ok=True)
                log = open(self.run_dir / "train.log", "a")
                env = dict(os.environ, OMP_NUM_THREADS=str(self.cpus))
                # A local trial is one process of its own, even when the driver runs inside a Slurm job.
                for k in [k for k in env if k.startswith("SLURM_") or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")]:
                    env.pop(k, None)
                self.proc = subprocess.Popen([sys.executable, "-m", "lift_dist.train", *self._argv(resume)],
                                             stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
            else:
                from lift_dist.launch import TrainTask, add_arguments, make_executor
                import argparse

                import submitit

                # A restored or retried trial reattaches to its job if that still runs (the driver may have
                # died, the job did not): a second job would train into the same run directory.
                record = self.run_dir / "slurm-job.json"
                if record.is_file():
                    rec = json.loads(record.read_text())
                    job = submitit.SlurmJob(folder=rec["folder"], job_id=rec["job_id"])
                    state = str(job.state).split(" ")[0]  # e.g. "CANCELLED by 0"
                    if state not in FINISHED_SLURM_STATES and state != "UNKNOWN":
                        self.job = job
                        return
                    if state == "UNKNOWN":  # Slurm no longer knows it (purged): make sure it is not running
                        job.cancel(check=False)
                p = argparse.ArgumentParser()
                add_arguments(p)
                folder = str(self.run_dir / "slurm-%j")
                largs = p.parse_args([*self.launch_args, "--folder", folder])
                self.job = make_executor(largs).submit(TrainTask(self._argv(False)))  # the task resumes itself
                self.run_dir.mkdir(parents=True, exist_ok=True)
                tmp = record.with_suffix(".tmp")
                tmp.write_text(json.dumps({"job_id": str(self.job.job_id), "folder": folder}))
                os.replace(tmp, record)

        def _running(self) -> bool:
            if self.proc is not None:
                return self.proc.poll() is None
            return self.job is not None and not self.job.done()

        def _failed(self) -> str | None:
            if self.proc is None and self.job is None:
                return None
            if self.proc is not None:
                return None if self.proc.returncode == 0 else f"training exited with {self.proc.returncode}; see {self.run_dir / 'train.log'}"
            try:
                self.job.result()
                return None
            except Exception as e:
                return f"Slurm job {self.job.job_id} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"

        def step(self) -> dict:
            while True:
                running = self._running()  # read before the files: what a finished run wrote is then seen
                hist = _history(self.run_dir)
                final = self.run_dir / "metrics.json"
                while self.reported < len(hist) and "eval" not in hist[self.reported]:
                    self.reported += 1  # an epoch without evaluation (the last: metrics.json follows)
                if self.reported < len(hist):
                    h = hist[self.reported]
                    self.reported += 1
                    return {self.metric: h["eval"][self.metric], "epoch": h["epoch"], "loss": h["loss"], **h["eval"]}
                if final.is_file() and (not running or len(hist) >= self.epochs):
                    m = json.loads(final.read_text())
                    return {self.metric: m[self.metric], "epoch": m["epochs"], "loss": hist[-1]["loss"] if hist else None,
                            "done": True, **{k: m[k] for k in METRICS}}
                if not running:
                    raise RuntimeError(self._failed() or "training ended without metrics")
                time.sleep(0.5)

        def save_checkpoint(self, checkpoint_dir: str):
            Path(checkpoint_dir, "trial.json").write_text(json.dumps({"run_dir": str(self.run_dir), "reported": self.reported}))
            return checkpoint_dir

        def load_checkpoint(self, checkpoint):
            state = json.loads(Path(checkpoint, "trial.json").read_text())
            self.reported = state["reported"]
            if Path(state["run_dir"]) == self.run_dir and (self._running() or (self.run_dir / "metrics.json").is_file()):
                return  # setup already resumed (or reattached to) this trial's training, or it had finished
            self.cleanup()
            self.run_dir = Path(state["run_dir"])
            if not (self.run_dir / "metrics.json").is_file():
                self._launch(resume=True)

        def cleanup(self):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            if self.job is not None and not self.job.done():
                self.job.cancel(check=False)  # the scheduler stopped this trial: free the Slurm allocation

    return LiftTrial


# ---- the driver ----------------------------------------------------------------------------------

def run_sweep(args, train_args: list[str]) -> dict:
    """Prepare data, run (or resume) the Tune experiment, write results.parquet, best.yaml, plots."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from lift_dist.config import load_config
    from lift_dist.data.manifest import read_manifest

    out = Path(args.out).resolve()
    space = load_space(args.space)
    if args.metric not in METRICS:
        raise ConfigError(f"--metric {args.metric} is not valid; choose one of {', '.join(METRICS)}")
    if args.backend == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--backend slurm needs `sbatch` on PATH; use --backend local on a machine without Slurm")
    shards = Path(args.shards).resolve()
    base = load_config(args.preset, None, [f"data.shards={shards}", *getattr(args, "overrides", [])])
    read_manifest(shards, base.data.train_split)  # missing shards: fail before any trial
    read_manifest(shards, base.data.eval_split)
    out.mkdir(parents=True, exist_ok=True)
    holdout = make_holdout(shards, out / "data", base.data.train_split, args.val_per_class, base.seed)

    trial_args = []
    if args.preset:
        trial_args += ["--preset", args.preset]
    trial_args += ["--shards", str(holdout), "--set", "data.train_split=train", "--set", "data.eval_split=val", *train_args]
    for o in getattr(args, "overrides", []):
        trial_args += ["--set", o]
    epochs = load_config(args.preset, None, [o for a, o in zip(trial_args, trial_args[1:]) if a == "--set"]).optim.epochs
    param_space = to_tune(space) | {"_train_args": trial_args, "_backend": args.backend, "_metric": args.metric,
                                    "_epochs": epochs, "_runs_root": str(out / "runs"), "_launch_args": list(args.launch_args or []), "_cpus": args.cpus_per_trial}
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=args.grace_period, reduction_factor=2)
                 if args.scheduler == "asha" else FIFOScheduler())
    trainable = tune.with_resources(make_trainable(), {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             configure_logging=False)
    exp = out / "tune"
    if args.resume:
        if not tune.Tuner.can_restore(str(exp)):
            raise ConfigError(f"--resume: no sweep to resume in {exp}")
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=args.metric, mode="max", num_samples=args.num_samples, scheduler=scheduler,
                                        search_alg=BasicVariantGenerator(random_state=args.seed),
                                        max_concurrent_trials=args.max_concurrent or None),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(out), stop={"training_iteration": epochs},
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=1),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    return summarise(grid, space, args, shards, base, out)


def summarise(grid, space: dict, args, shards: Path, base, out: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for r in grid:
        cfg = {k: v for k, v in r.config.items() if not k.startswith("_")}
        cfg_epochs = r.config["_epochs"]
        # Dimensions a trial's module does not use are left empty, so plots and tables don't mislead.
        if cfg.get("module", "adaptformer") not in SIZED_BY_R:
            cfg["r"] = None
        if cfg.get("module", "adaptformer") != "sparse":
            cfg["alpha"] = None
        m = r.metrics or {}
        rows.append({
            "trial_id": m.get("trial_id"), **{k: cfg.get(k) for k in space},
            **{k: m.get(k) for k in METRICS}, "epochs_run": m.get("training_iteration"),
            # A trial the scheduler ended early ran fewer epochs than asked for.
            "status": "error" if r.error else ("completed" if (m.get("training_iteration") or 0) >= cfg_epochs else "stopped"),
            "run_dir": str(out / "runs" / str(m.get("trial_id"))),
        })
    table = {k: [row[k] for row in rows] for k in rows[0]} if rows else {}
    pq.write_table(pa.table(table), out / "results.parquet")
    done = [r for r in rows if r["status"] == "completed" and r[args.metric] is not None]
    if not done:
        raise DataError(f"no trial completed; see {out / 'tune'}")
    best = max(done, key=lambda r: r[args.metric])
    from lift_dist.config import load_config, to_dict

    best_run = load_config(config_file=str(Path(best["run_dir"]) / "config.yaml"))
    best_run.data.shards, best_run.data.train_split, best_run.data.eval_split = str(shards), base.data.train_split, base.data.eval_split
    best_run.data.tte, best_run.eval_every_epochs, best_run.resume, best_run.out = base.data.tte, 0, None, "runs/best"
    best_run.data.resolution = base.data.resolution  # the trial's config.yaml holds the resolved one
    data = to_dict(best_run)
    data["optim"]["betas"] = list(data["optim"]["betas"])
    (out / "best.yaml").write_text(f"# best trial {best['trial_id']}: {args.metric} {best[args.metric]:.4f} on the held-out split\n"
                                   + yaml.safe_dump(data, sort_keys=False))
    test = evaluate_best_on_test(Path(best["run_dir"]), shards, base)
    summary = {"best_trial": best["trial_id"], "metric": args.metric, "validation": {k: best[k] for k in METRICS},
               "params": {k: best[k] for k in space}, "test": test, "trials": len(rows),
               "completed": len(done), "stopped": sum(r["status"] == "stopped" for r in rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_results(rows, space, args.metric, out / "metric_vs_params.png")
    return summary


def evaluate_best_on_test(run_dir: Path, shards: Path, base) -> dict:
    from lift_dist.data.manifest import read_manifest
    from lift_dist.engine.evaluate import evaluate, load_run

    model, cfg = load_run(run_dir)
    train_m = read_manifest(shards, base.data.train_split)
    test_m = read_manifest(shards, base.data.eval_split)
    res = cfg.data.resolution or model.encoder.image_size
    m = evaluate(model, test_m, train_m.train_counts, resolution=res, interpolation=cfg.data.interpolation,
                 tte=base.data.tte, tte_mode=base.data.tte_mode, tte_expand=base.data.tte_expand, workers=1)
    from lift_dist.engine.trainer import summary_metrics

    return summary_metrics(m) | {"split": test_m.split, "tte": base.data.tte}


def plot_results(rows: list[dict], space: dict, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r[key], r[metric], r["status"]) for r in rows if r[key] is not None and r[metric] is not None]
        for status, colour in (("completed", "tab:blue"), ("stopped", "tab:orange"), ("error", "tab:red")):
            xs = [p[0] for p in pts if p[2] == status]
            ys = [p[1] for p in pts if p[2] == status]
            if key == "module":
                names = sorted({str(p[0]) for p in pts})
                xs = [names.index(str(x)) for x in xs]
                ax.set_xticks(range(len(names)), names)
            ax.scatter(xs, ys, c=colour, label=status, s=24)
        if not pts:  # e.g. alpha when no trial drew the sparse module
            ax.text(0.5, 0.5, "no trial used it", ha="center", va="center", transform=ax.transAxes)
        elif key in ("alpha", "lr", "r") and all(isinstance(p[0], (int, float)) and p[0] > 0 for p in pts):
            ax.set_xscale("log")  # a log axis without positive data cannot place its ticks
        ax.set_xlabel(key)
        ax.set_ylabel(f"validation {metric}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
