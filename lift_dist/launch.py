"""Multi-node training on Slurm through submitit (`lift-dist launch ...`, `python launch/slurm.py ...`).

The training arguments are parsed and checked once, here, before anything is submitted (the same
checks `lift-dist train` makes, for the job's world size); the resolved configuration is written to
RUN/launch-<submission>.yaml (one per submission) and every task trains from that file. One Slurm task per GPU (or T tasks per node on
CPU clusters); each task reads its rank, world size, local rank and the node list from submitit's
JobEnvironment, sets MASTER_ADDR to the first node and MASTER_PORT from the job id, and trains with
`resume=latest`: a requeued job (preemption, time limit, `scontrol requeue`) continues from its newest
checkpoint. `--kill-on-bad-exit` makes one failed task end the others instead of leaving them waiting.

`lift-dist launch ... -- predict --run RUN --shards DIR --out FILE.parquet` runs distributed prediction
of a shard split instead (lift_dist.predict): the same tasks, each predicting its share of the shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import submitit

from lift_dist import cli
from lift_dist.commands import train as train_command
from lift_dist.config import RunConfig, load_config
from lift_dist.data.manifest import read_manifest
from lift_dist.engine.launcher_env import slurm_master_port
from lift_dist.engine.preflight import check_batch, check_files, check_run_dir, read_data, run_signature
from lift_dist.errors import SECONDARY, ConfigError, LiftError, one_line
from lift_dist.run_dir import RunDir, launch_id, write_json
from lift_dist.train import config_from_args

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED", "REVOKED", "SPECIAL_EXIT")
SRUN_ARGS = ["--kill-on-bad-exit=1"]


def set_rank_environment() -> None:
    """torchrun's variables from submitit's JobEnvironment, for the process group."""
    env = submitit.JobEnvironment()
    os.environ.update(
        RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(slurm_master_port(str(env.job_id).split("_")[0])),
    )


class Task:
    """What every submitted task shares: it runs `run()` and leaves how it ended in a small JSON file in
    the job folder (`outcome_file`). `launch --wait` reads those, never submitit's pickled result: the
    job folder could have been handed over, and nothing read back is unpickled."""

    def __call__(self):
        env = submitit.JobEnvironment()
        outcome = outcome_file(env.paths.folder, env.job_id, env.global_rank)
        try:
            result = self.run()
        except Exception as e:  # recorded, then raised as before (submitit and Slurm see the failure)
            write_json(outcome, {"ok": False, "error": task_error_line(e)})
            raise
        write_json(outcome, {"ok": True})
        return result

    def run(self):
        raise NotImplementedError


def outcome_file(folder, job_id, rank: int) -> Path:
    return Path(folder) / f"{job_id}_{rank}_outcome.json"


def task_error_line(e: BaseException) -> str:
    if isinstance(e, LiftError):
        return f"lift-dist train: {getattr(e, 'label', 'error')}: {one_line(e)}"
    return f"{type(e).__name__}: {one_line(e)}"


class TrainTask(Task):
    """The picklable callable submitit runs on every task: train from a resolved config file."""

    def __init__(self, config_file: str):
        self.config_file = str(config_file)

    def run(self) -> dict:
        # The trainer (DeepSpeed, open_clip) is imported by the task that trains, not by every process
        # that submits or follows jobs (a sweep's trial actors import this module).
        from lift_dist.engine.trainer import train  # noqa: PLC0415  (seconds of imports, needed only here)

        set_rank_environment()
        try:
            return train(load_config(config_file=self.config_file))
        except LiftError as e:  # the one line `lift-dist train` prints, where `launch --wait` finds it
            print(task_error_line(e), file=sys.stderr, flush=True)
            raise

    def checkpoint(self):
        """Called by submitit on preemption / time-out: requeue the same task (it resumes itself)."""
        return submitit.helpers.DelayedSubmission(TrainTask(self.config_file))


class PredictTask(Task):
    """Every task runs `lift-dist predict ARGS` on its share of the shards (rank 0 writes the file)."""

    def __init__(self, predict_argv: list[str]):
        self.predict_argv = list(predict_argv)

    def run(self) -> int:
        set_rank_environment()
        code = cli.main(["predict", *self.predict_argv])  # a user error is printed as its one line
        if code:
            raise RuntimeError(f"lift-dist predict exited with status {code}")
        return code

    def checkpoint(self):
        """Preempted: predict again from the start (the Parquet file is only ever written whole)."""
        return submitit.helpers.DelayedSubmission(PredictTask(self.predict_argv))


def tasks_per_node(args) -> int:
    return args.gpus_per_node or args.tasks_per_node or 1


def check_cluster(args) -> None:
    if args.nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {args.nodes}")
    for flag, value in (("--gpus-per-node", args.gpus_per_node), ("--tasks-per-node", args.tasks_per_node),
                        ("--time", args.time)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if args.local and args.nodes != 1:
        raise ConfigError(f"--local runs every task on this machine: use --nodes 1 (got {args.nodes}) and --tasks-per-node")
    if args.local and args.dry_run:
        raise ConfigError("--dry-run prints the sbatch script of a Slurm job; leave out --local")
    if args.local or args.dry_run:
        return
    if shutil.which("sbatch") is None:
        raise ConfigError("no `sbatch` on PATH: this machine cannot submit Slurm jobs. Use --local to run the same "
                          "job with submitit's local executor, or --dry-run to see the sbatch script")
    if args.gpus_per_node:
        gres = subprocess.run(["sinfo", "-h", "-o", "%G"] + (["-p", args.partition] if args.partition else []),
                              capture_output=True, text=True, timeout=60).stdout.split()
        if not any("gpu" in g for g in gres):
            raise ConfigError(f"--gpus-per-node {args.gpus_per_node} requested, but the cluster"
                              + (f" partition {args.partition}" if args.partition else "")
                              + " reports no GPUs (sinfo %G: " + (", ".join(sorted(set(gres))) or "nothing")
                              + "); use --tasks-per-node for CPU nodes")


def prepare(train_argv: list[str], world: int, settings_only: bool = False) -> RunConfig:
    """Parse and check the training arguments for a job of `world` tasks (nothing is written); with
    `settings_only` (a dry run, which may be made away from the data) the data and run directory are
    not looked at."""
    if not train_argv:
        raise ConfigError("no training arguments: put them after `--`, e.g. -- --preset places_lt --shards DIR --out RUN")
    p = argparse.ArgumentParser(prog="lift-dist launch -- (training arguments)")
    train_command.add_arguments(p)
    cfg = config_from_args(p.parse_args(train_argv))
    if settings_only:
        cfg.resume = cfg.resume or "latest"
        return cfg
    train, _ = read_data(cfg, world)
    micro, accum = check_batch(cfg, train, world, [])
    check_files(cfg, train)
    check_run_dir(cfg, RunDir(cfg.out), run_signature(cfg, train, world, micro, accum), launch_id(), [])
    cfg.resume = cfg.resume or "latest"  # a requeued job must continue, not start again
    return cfg


def prepare_predict(predict_argv: list[str], settings_only: bool = False) -> argparse.Namespace:
    """Parse and check `predict` arguments before submission: a shard split, readable (unless
    `settings_only`, a dry run), with --out."""
    from lift_dist.predict import check_args  # noqa: PLC0415  (torchvision and the model code: only for predict jobs)

    p, _ = cli.command_parser("predict", prog="lift-dist launch -- predict")
    args = p.parse_args(predict_argv)
    check_args(args)
    if not args.shards:
        raise ConfigError("a launched predict job predicts a shard split: give --shards DIR --out FILE.parquet "
                          "(image files are predicted on one process with `lift-dist predict`)")
    if not settings_only:
        read_manifest(args.shards, args.split, args.shard_pipe)  # a missing split is named now, not in every task
    return args


def slurm_parameters(args) -> dict:
    """What the job asks Slurm for, in submitit's parameter names."""
    params = dict(name=args.job_name, timeout_min=args.time, nodes=args.nodes, tasks_per_node=tasks_per_node(args))
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.cpus_per_task:
        params["cpus_per_task"] = args.cpus_per_task
    if args.local:
        return params
    for key, value in (("slurm_partition", args.partition), ("slurm_account", args.account), ("slurm_mem", args.mem)):
        if value:
            params[key] = value
    # A manual `scontrol requeue` must be allowed too, whatever the cluster default.
    params["slurm_additional_parameters"] = {"requeue": True}
    params["slurm_srun_args"] = SRUN_ARGS
    return params


def make_executor(args):
    executor = submitit.AutoExecutor(folder=args.folder, cluster="local" if args.local else "slurm",
                                     slurm_max_num_timeout=args.max_requeues)
    executor.update_parameters(**slurm_parameters(args))
    return executor


def dry_run_text(args, task: str) -> str:
    """The job as sbatch directives (what lift-dist asks submitit for; submitit adds its own --signal and
    log options when it writes the real script) and the command every task runs. Needs no Slurm."""
    p = slurm_parameters(args)
    flags = {"job-name": p["name"], "time": p["timeout_min"], "nodes": p["nodes"], "ntasks-per-node": p["tasks_per_node"],
             "gpus-per-node": p.get("gpus_per_node"), "cpus-per-task": p.get("cpus_per_task"),
             "partition": p.get("slurm_partition"), "account": p.get("slurm_account"), "mem": p.get("slurm_mem"),
             "requeue": True, "output": f"{args.folder}/%j_0_log.out", "error": f"{args.folder}/%j_0_log.err"}
    lines = ["#!/bin/bash"] + [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={v}" for k, v in flags.items() if v is not None]
    lines += ["", f"srun {' '.join(SRUN_ARGS)} {sys.executable} -u -m submitit.core._submit {args.folder}",
              "# each task: RANK=SLURM_PROCID, WORLD_SIZE=SLURM_NTASKS, LOCAL_RANK=SLURM_LOCALID,",
              "# MASTER_ADDR=<first host of the node list>, MASTER_PORT=15000 + job_id % 15000, then",
              f"# {task}"]
    return "\n".join(lines)


def submit(args, train_argv: list[str]) -> int:
    check_cluster(args)
    if train_argv[:1] == ["predict"]:
        prepare_predict(train_argv[1:], settings_only=args.dry_run)
        if args.dry_run:
            print(dry_run_text(args, f"lift-dist predict {' '.join(train_argv[1:])}"))
            return 0
        return start(args, PredictTask(train_argv[1:]))
    cfg = prepare(train_argv, args.nodes * tasks_per_node(args), settings_only=args.dry_run)
    run, submission = RunDir(cfg.out), time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    if args.dry_run:
        print(dry_run_text(args, f"trains from {run.launch_config(submission)} (resume: {cfg.resume}; run directory {cfg.out})"))
        return 0
    run.create()
    return start(args, TrainTask(str(run.write_launch_config(cfg, submission))))


def start(args, task) -> int:
    try:
        job = make_executor(args).submit(task)
    except submitit.core.utils.FailedJobError as e:
        msg = str(e).strip().splitlines()
        slurm_msg = next((line for line in msg if "error" in line.lower()), msg[-1] if msg else str(e))
        raise LiftError(f"Slurm rejected the job: {slurm_msg.strip()}") from None
    print(f"submitted job {job.job_id}")
    if isinstance(task, TrainTask):
        print(f"  trains from: {task.config_file}")
    print(f"  logs:   {job.paths.stdout} (rank 0), {job.paths.stderr}")
    print(f"  follow: tail -f {job.paths.stdout}" + ("" if args.local else f"   |   squeue -j {job.job_id}"))
    return follow(job, args.local) if args.wait else 0


def follow(job, local: bool) -> int:
    """Print rank 0's log as it grows; at the end, how the job ended: from Slurm's state (a local job
    has none), the tasks' error lines and their outcome files."""
    printed = 0
    while not job.done():
        printed = _tail(job.paths.stdout, printed)
        time.sleep(2)
    _tail(job.paths.stdout, printed)
    state = "FINISHED" if local else final_state(job)
    error = first_task_error(job) or outcome_error(job)
    if error is None and state in ("COMPLETED", "FINISHED"):
        print(f"job {job.job_id} finished successfully")
        return 0
    print(f"job {job.job_id} ended in state {state}: {error or 'no error line in the task logs; see ' + str(job.paths.stderr)}",
          file=sys.stderr)
    return 1


def outcome_error(job) -> str | None:
    """The first task whose outcome file records an error, is missing (the task was killed before its
    end) or is not an outcome; None when every task recorded success."""
    for t in range(job.num_tasks):
        path = outcome_file(job.paths.folder, job.job_id, t)
        try:
            outcome = json.loads(path.read_text())
        except FileNotFoundError:
            return (f"rank {t} recorded no outcome ({path} is missing: the task was stopped before it finished; "
                    f"see {job.task(t).paths.stderr})")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"rank {t}'s outcome file {path} is not readable JSON: {e}"
        if not isinstance(outcome, dict) or not isinstance(outcome.get("ok"), bool):
            return f"rank {t}'s outcome file {path} is not an outcome record (expected {{\"ok\": true|false, ...}})"
        if not outcome["ok"]:
            return f"rank {t}: {outcome.get('error')}"
    return None


def final_state(job, timeout_s: float = 120) -> str:
    """Slurm's final state of the job (sacct lags behind the tasks' exit: poll until it is final)."""
    deadline = time.time() + timeout_s
    state = "UNKNOWN"
    while time.time() < deadline:
        state = str(job.get_info(mode="force").get("State") or job.state).split(" ")[0]
        if state in FINAL_STATES:
            return state
        time.sleep(2)
    return state


def first_task_error(job, settle_s: float = 20) -> str | None:
    """The first rank's one-line lift-dist error in the task logs ('rank R: ...'), if any. A rank that
    only stopped because another failed is named only when no rank says more: while that is all the
    logs hold, they are read again for `settle_s` (Slurm may still be writing the failed rank's log)."""
    deadline = time.time() + settle_s
    while True:
        hits = task_errors(job)
        best = min(hits, key=lambda h: SECONDARY in h, default=None)
        if best is None or SECONDARY not in best or time.time() >= deadline:
            return best
        time.sleep(1)


def task_errors(job) -> list[str]:
    hits = []
    for t in range(job.num_tasks):
        path = job.task(t).paths.stderr
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        hit = next((line[line.index("lift-dist "):] for line in lines if "lift-dist " in line and ": error: " in line), None)
        if hit:  # (torch may prefix a rank's stderr lines with "[rankN]:")
            hits.append(f"rank {t}: {hit}")
    return hits


def _tail(path: Path, offset: int) -> int:
    try:
        with open(path) as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    if chunk:
        print(chunk, end="", flush=True)
    return offset + len(chunk.encode())


def run(args: argparse.Namespace) -> int:
    return submit(args, list(args.train_args))
