"""Running lift-dist as a user does: `python -m lift_dist ...` and torchrun, real processes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from lift_dist.cli import main

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"

# The smallest training: built-in random `tiny` CLIP, CPU, one loader worker.
TINY = ["--model", "tiny", "--device", "cpu", "--workers", "1", "--set", "model.pretrained=null",
        "--set", "data.tte_expand=8", "--set", "data.shuffle_buffer=50"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    return env | extra


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lift_dist", *args]


def torchrun_cmd(nproc: int, *args: str, command: str = "train") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
            f"--master-port={free_port()}", "-m", "lift_dist", command, *args]


def run_cli(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, env=env or run_env(), timeout=timeout, cwd=REPO)


def run_in_process(*args: str, prog: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`lift-dist ARGS` inside this test process, for commands that stop before any process group or training:
    the same `main` and error wrapper as a subprocess, without the ~6 s of interpreter and torch start-up per call.
    The call sees what a subprocess of `run_cli` would: `env` (default `run_env()`: no launcher variables) and
    one torch thread; the test's environment and thread count are restored afterwards."""
    out, err, saved, threads = io.StringIO(), io.StringIO(), dict(os.environ), torch.get_num_threads()
    os.environ.clear()
    os.environ.update(run_env() if env is None else env)
    torch.set_num_threads(1)  # OMP_NUM_THREADS=1 of run_env: the same arithmetic as the subprocesses it is compared with
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args), prog=prog)
            except SystemExit as e:  # argparse's usage errors (and --help)
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["lift-dist", *args], code, out.getvalue(), err.getvalue())


def timed_cli(*args: str, timeout: int = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    p = run_cli(*args, timeout=timeout)
    return p, time.monotonic() - t0


def run_torchrun(nproc: int, *args: str, timeout: int = 300, check: bool = True, env: dict | None = None,
                 command: str = "train"):
    proc = subprocess.run(torchrun_cmd(nproc, *args, command=command), capture_output=True, text=True, env=env or run_env(),
                          timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_side_by_side(*commands: list[str], timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Independent single-process commands at once: each spends most of its time importing on one core
    (OMP_NUM_THREADS=1), so two of them take about the time of one on a 2-core machine. Any left running
    when the test fails (or times out) are killed."""
    deadline = time.monotonic() + timeout
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(), cwd=REPO)
             for c in commands]
    try:
        done = []
        for c, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(c, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for p in done:
        if p.returncode != 0:
            raise AssertionError(f"{' '.join(p.args[-8:])} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return done


def latest_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def latest_weights(run: Path) -> dict:
    return load_file(str(latest_checkpoint(run) / "trainable.safetensors"))


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below `root` (to prove a command wrote nothing)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
