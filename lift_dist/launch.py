"""Multi-node training on Slurm through submitit (`python launch/slurm.py ...`).

One Slurm task per GPU (or T tasks per node on CPU clusters). Inside the job every task reads its
rank, world size, local rank and the node list from submitit's JobEnvironment, sets MASTER_ADDR to
the first node and MASTER_PORT from the job id, then runs the very same entry as `lift-dist train`,
always with `--resume latest`: a requeued job (preemption, time limit, `scontrol requeue`) continues
from its newest checkpoint instead of starting again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lift_dist.errors import ConfigError, LiftError


class TrainTask:
    """The picklable callable submitit runs on every task."""

    def __init__(self, train_argv: list[str]):
        self.train_argv = list(train_argv)

    def __call__(self) -> dict:
        import submitit

        from lift_dist.engine.distributed import slurm_master_port
        from lift_dist.engine.trainer import train
        from lift_dist.train import config_from_args, add_arguments

        env = submitit.JobEnvironment()
        os.environ.update(
            RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
            MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(slurm_master_port(str(env.job_id).split("_")[0])),
        )
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args([*self.train_argv, "--resume", "latest"])
        cfg = config_from_args(args)
        return train(cfg)

    def checkpoint(self):
        """Called by submitit on preemption / time-out: requeue the same task (it resumes itself)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainTask(self.train_argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=1)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpus-per-node", type=int, help="one task per GPU")
    g.add_argument("--tasks-per-node", type=int, help="tasks per node on CPU clusters")
    p.add_argument("--partition")
    p.add_argument("--time", type=int, default=60, help="time limit in minutes")
    p.add_argument("--account")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem", help="memory per node, e.g. 64G")
    p.add_argument("--job-name", default="lift-dist")
    p.add_argument("--folder", default="slurm-logs/%j", help="submitit log folder (%%j = job id)")
    p.add_argument("--max-requeues", type=int, default=3, help="requeues allowed after time-outs (submitit's limit; preempted jobs are always requeued)")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit with its status")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script and environment; submit nothing")
    p.add_argument("--local", action="store_true", help="run the same path with submitit's local executor (no Slurm)")


def _check_cluster(args) -> None:
    if args.nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {args.nodes}")
    for flag, value in (("--gpus-per-node", args.gpus_per_node), ("--tasks-per-node", args.tasks_per_node)):
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


def make_executor(args):
    import submitit

    executor = submitit.AutoExecutor(folder=args.folder, cluster="local" if args.local else "slurm",
                                     slurm_max_num_timeout=args.max_requeues)
    tasks = args.gpus_per_node or args.tasks_per_node or 1
    params = dict(name=args.job_name, timeout_min=args.time, nodes=args.nodes, tasks_per_node=tasks)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.cpus_per_task:
        params["cpus_per_task"] = args.cpus_per_task
    slurm = {}
    if args.partition:
        slurm["slurm_partition"] = args.partition
    if args.account:
        slurm["slurm_account"] = args.account
    if args.mem:
        slurm["slurm_mem"] = args.mem
    if not args.local:
        # A manual `scontrol requeue` must be allowed too, whatever the cluster default.
        slurm["slurm_additional_parameters"] = {"requeue": True}
        params.update(slurm)
    executor.update_parameters(**params)
    return executor


def dry_run_text(executor, train_argv: list[str]) -> str:
    from submitit.slurm.slurm import _make_sbatch_string

    inner = executor._executor
    script = _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit {inner.folder}", folder=inner.folder, **inner.parameters)
    env = ("# in each task: RANK=SLURM_PROCID, WORLD_SIZE=SLURM_NTASKS, LOCAL_RANK=SLURM_LOCALID,\n"
           "# MASTER_ADDR=<first host of the node list>, MASTER_PORT=15000 + job_id % 15000\n"
           f"# then: lift-dist train {' '.join(train_argv)} --resume latest")
    return script + "\n" + env


def submit(args, train_argv: list[str]) -> int:
    _check_cluster(args)
    if not train_argv:
        raise ConfigError("no training arguments: put them after `--`, e.g. -- --preset places_lt --shards DIR --out RUN")
    executor = make_executor(args)
    if args.dry_run:
        print(dry_run_text(executor, train_argv))
        return 0
    import submitit

    try:
        job = executor.submit(TrainTask(train_argv))
    except submitit.core.utils.FailedJobError as e:
        msg = str(e).strip().splitlines()
        slurm_msg = next((l for l in msg if "error" in l.lower()), msg[-1] if msg else str(e))
        raise LiftError(f"Slurm rejected the job: {slurm_msg.strip()}") from None
    print(f"submitted job {job.job_id}")
    print(f"  logs:   {job.paths.stdout} (rank 0), {job.paths.stderr}")
    print(f"  follow: tail -f {job.paths.stdout}" + ("" if args.local else f"   |   squeue -j {job.job_id}"))
    if not args.wait:
        return 0
    return follow(job)


def follow(job) -> int:
    printed = 0
    while not job.done():
        printed = _tail(job.paths.stdout, printed)
        time.sleep(2)
    _tail(job.paths.stdout, printed)
    state = job.state
    try:
        job.results()
    except Exception as e:  # the job's own error, as submitit reports it
        print(f"job {job.job_id} ended in state {state}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}", file=sys.stderr)
        return 1
    print(f"job {job.job_id} finished successfully")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_argv: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_argv = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(prog="launch/slurm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return submit(args, train_argv)
    except LiftError as e:
        print(f"launch/slurm.py: error: {e}", file=sys.stderr)
        return 2
