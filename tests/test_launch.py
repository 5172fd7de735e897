"""launch/slurm.py on the local real 4-node Slurm cluster (scripts/slurm/cluster.sh) and submitit's
local executor."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_env
from lift_dist.testing.slurm_cluster import slurm_cluster  # noqa: F401 (fixture)

LAUNCH = [sys.executable, str(REPO / "launch" / "slurm.py")]
TRAIN = ["--model", "tiny", "--device", "cpu", "--workers", "1", "--batch-size", "16", "--set", "model.pretrained=null",
         "--set", "data.tte_expand=8", "--set", "data.shuffle_buffer=50"]


def launch(*args, timeout=600, env=None):
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env or run_env())


def job_id(stdout: str) -> str:
    return re.search(r"submitted job (\d+)", stdout).group(1)


@pytest.mark.slow
def test_four_node_job_trains_and_requeue_resumes(slurm_cluster, demo_shards, tmp_path):
    common = ["--shards", str(demo_shards), "--epochs", "2", *TRAIN, "--set", "checkpoint_every_steps=2",
              "--set", "keep_checkpoints=20", "--set", "deterministic=true"]
    # Uninterrupted 4-node run, followed to the end with --wait.
    p = launch("--nodes", "4", "--tasks-per-node", "1", "--time", "10", "--folder", str(tmp_path / "logs-a" / "%j"), "--wait",
               "--", *common, "--out", str(tmp_path / "a"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    jid = job_id(p.stdout)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["world_size"] == 4
    assert (tmp_path / "a" / "checkpoints" / "latest").is_file()
    # All 4 tasks ran, one per node, each with its own global rank.
    logs = tmp_path / "logs-a" / jid
    ranks = set()
    for t in range(4):
        text = (logs / f"{jid}_{t}_log.out").read_text() + (logs / f"{jid}_{t}_log.err").read_text()
        m = re.search(r"node=(\d)\(4\), global_rank=(\d)\(4\)", text)
        assert m, text[-500:]
        ranks.add((m.group(1), m.group(2)))
    assert ranks == {(str(i), str(i)) for i in range(4)}

    # Same run, requeued by hand mid-run: it must resume from its checkpoint, not restart.
    b = tmp_path / "b"
    p = launch("--nodes", "4", "--tasks-per-node", "1", "--time", "10", "--folder", str(tmp_path / "logs-b" / "%j"),
               "--", *common, "--out", str(b))
    assert p.returncode == 0, p.stderr
    jid = job_id(p.stdout)
    deadline = time.time() + 300
    while time.time() < deadline and not list((b / "checkpoints").glob("step-00000004")):
        time.sleep(0.2)
    assert list((b / "checkpoints").glob("step-00000004")), "no mid-run checkpoint appeared"
    subprocess.run(["scontrol", "requeue", jid], check=True)
    deadline = time.time() + 400
    while time.time() < deadline and not (b / "metrics.json").exists():
        time.sleep(1)
    assert (b / "metrics.json").exists(), (b / "log.txt").read_text()[-2000:]
    log = (b / "log.txt").read_text()
    assert "resumed from" in log
    resumed = json.loads((b / "metrics.json").read_text())
    for k in ("overall", "mean_class", "head", "medium", "tail"):
        assert resumed[k] == metrics[k], k


def test_errors_before_submission(slurm_cluster, tmp_path):
    p = launch("--nodes", "0", "--", "--shards", "x")
    assert p.returncode == 2 and "--nodes must be at least 1, got 0" in p.stderr
    p = launch("--nodes", "1", "--gpus-per-node", "2", "--", "--shards", "x")
    assert p.returncode == 2 and "reports no GPUs" in p.stderr and "--tasks-per-node" in p.stderr
    p = launch("--nodes", "1", "--partition", "nosuchpartition", "--folder", str(tmp_path / "l" / "%j"), "--", "--shards", "x")
    assert p.returncode == 2 and "Slurm rejected the job" in p.stderr and "invalid partition specified: nosuchpartition" in p.stderr
    p = launch("--nodes", "1", "--account", "nosuchaccount", "--folder", str(tmp_path / "l" / "%j"), "--", "--shards", "x")
    assert p.returncode == 2 and "Slurm rejected the job" in p.stderr and "Invalid account" in p.stderr


def test_no_sbatch_suggests_local(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    p = launch("--nodes", "2", "--", "--shards", "x", env=run_env() | {"PATH": str(bin_dir)})
    assert p.returncode == 2 and "no `sbatch` on PATH" in p.stderr and "--local" in p.stderr


def test_dry_run_prints_the_sbatch_script(tmp_path):
    p = launch("--nodes", "4", "--tasks-per-node", "2", "--partition", "debug", "--time", "30", "--dry-run",
               "--folder", str(tmp_path / "l" / "%j"), "--", "--preset", "places_lt", "--shards", "/data/s")
    assert p.returncode == 0, p.stderr
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=2", "#SBATCH --partition=debug", "#SBATCH --time=30",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@90", "srun "):
        assert line in p.stdout, line
    assert "--preset places_lt --shards /data/s --resume latest" in p.stdout
    assert not (tmp_path / "l").exists() or not any((tmp_path / "l").rglob("*.pkl"))  # nothing submitted


@pytest.mark.slow
def test_local_executor_runs_the_same_path(demo_shards, tmp_path):
    p = launch("--local", "--nodes", "1", "--tasks-per-node", "2", "--folder", str(tmp_path / "l" / "%j"), "--wait",
               "--", "--shards", str(demo_shards), "--out", str(tmp_path / "run"), "--epochs", "1", *TRAIN,
               "--set", "data.tte=false")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world_size"] == 2
