"""Rank, world size and rendezvous from whichever launcher started us: torchrun / the deepspeed launcher
(RANK, WORLD_SIZE, LOCAL_RANK), Slurm's srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID), or a
plain single process. Read from the environment alone, before any process group exists."""

from __future__ import annotations

import os
import re
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_master_addr(nodelist: str) -> str:
    """First host of the job's node list (scontrol expands e.g. 'n[1-4]')."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30)
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        # No scontrol: expand the first entry by hand, e.g. 'gpu[07-12,15],cpu1' -> 'gpu07'.
        m = re.match(r"([^\[,]+)(?:\[(\d+))?", nodelist)
        return (m.group(1) + (m.group(2) or "")) if m else nodelist


def slurm_master_port(job_id: str) -> int:
    # Derived from the job id so that jobs sharing a node do not clash; same on every task.
    return 15000 + int(job_id) % 15000  # below the kernel's ephemeral range (32768+)


def detect() -> tuple[int, int, int, str]:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun"
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        world = int(env["SLURM_STEP_NUM_TASKS"])
        rank, local = int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0))
        env.setdefault("MASTER_ADDR", slurm_master_addr(env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "localhost"))))
        env.setdefault("MASTER_PORT", str(slurm_master_port(env.get("SLURM_JOB_ID", "0"))))
        env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = str(rank), str(world), str(local)
        return rank, world, local, "slurm"
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(free_port()))
    env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = "0", "1", "0"
    return 0, 1, 0, "single"
