"""launch/slurm.py on the local real 4-node Slurm cluster (scripts/slurm/cluster.sh) and submitit's
local executor."""

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from support.data import damaged_copy
from support.runs import REPO, last_line, run_env, run_in_process

from lift_dist.config import load_config
from lift_dist.launch import Task, follow, outcome_file

LAUNCH = [sys.executable, str(REPO / "launch" / "slurm.py")]
TRAIN = ["--model", "tiny", "--device", "cpu", "--workers", "1", "--batch-size", "16", "--set", "model.pretrained=null",
         "--set", "data.tte_expand=8", "--set", "data.shuffle_buffer=50"]


def launch(*args, timeout=600, env=None):
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env or run_env())


def launch_checks(*args, env=None):
    """launch/slurm.py run in this process, for the calls that stop before or at submission."""
    return run_in_process("launch", *args, prog="launch/slurm.py", env=env)


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


def test_errors_before_submission(slurm_cluster, demo_shards, tmp_path):
    p = launch_checks("--nodes", "0", "--", "--shards", "x")
    assert p.returncode == 2 and "--nodes must be at least 1, got 0" in p.stderr
    p = launch_checks("--nodes", "1", "--gpus-per-node", "2", "--", "--shards", "x")
    assert p.returncode == 2 and "reports no GPUs" in p.stderr and "--tasks-per-node" in p.stderr
    # The training arguments are checked here, for the job's world size, before anything is submitted.
    p = launch_checks("--nodes", "2", "--tasks-per-node", "2", "--", "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "r"))
    assert p.returncode == 2 and f"shard directory {tmp_path / 'none'} does not exist" in p.stderr
    p = launch_checks("--nodes", "4", "--tasks-per-node", "2", "--", "--shards", str(demo_shards), "--out", str(tmp_path / "r"), *TRAIN)
    assert p.returncode == 2 and "has 6 'train' shard(s) but 8 rank(s) × 1 data worker(s) need at least 8" in p.stderr
    assert not (tmp_path / "r").exists()
    ok = ["--", "--shards", str(demo_shards), "--out", str(tmp_path / "r"), *TRAIN]
    p = launch_checks("--nodes", "1", "--partition", "nosuchpartition", "--folder", str(tmp_path / "l" / "%j"), *ok)
    assert p.returncode == 2 and "Slurm rejected the job" in p.stderr and "invalid partition specified: nosuchpartition" in p.stderr
    p = launch_checks("--nodes", "1", "--account", "nosuchaccount", "--folder", str(tmp_path / "l" / "%j"), *ok)
    assert p.returncode == 2 and "Slurm rejected the job" in p.stderr and "Invalid account" in p.stderr


@pytest.mark.slow
def test_a_second_launch_leaves_the_settings_of_a_queued_job_alone(slurm_cluster, demo_shards, tmp_path):
    # Every node held exclusively: the launched jobs wait in the queue (and take no run-directory lock yet).
    blocker = subprocess.run(["sbatch", "--parsable", "--exclusive", "-N", "4", "--wrap", "sleep 300"], capture_output=True,
                             text=True, check=True).stdout.strip().split(";")[0]
    jobs = [blocker]
    try:
        files = []
        for lr in ("0.01", "0.5"):
            p = launch_checks("--nodes", "4", "--tasks-per-node", "1", "--folder", str(tmp_path / "l" / "%j"), "--",
                              "--shards", str(demo_shards), "--out", str(tmp_path / "r"), *TRAIN, "--lr", lr)
            assert p.returncode == 0, p.stderr
            jobs.append(job_id(p.stdout))
            files.append(re.search(r"trains from: (\S+)", p.stdout).group(1))
        states = subprocess.run(["squeue", "-h", "-o", "%T", "-j", ",".join(jobs[1:])], capture_output=True, text=True).stdout.split()
        assert states == ["PENDING", "PENDING"], states
        assert files[0] != files[1]
        assert [load_config(config_file=f).optim.lr for f in files] == [0.01, 0.5]  # the first job still trains at 0.01
    finally:
        subprocess.run(["scancel", *jobs], capture_output=True)


@pytest.mark.slow
def test_wait_names_the_failing_ranks_error_and_the_final_state(slurm_cluster, demo_shards, tmp_path):
    def corrupt_first_jpeg(entries):
        first = next(n for n, _ in entries if n.endswith(".jpg"))
        return [(n, b"\xff\xd8\xff\xe0 not a jpeg" if n == first else d) for n, d in entries]

    tar = damaged_copy(demo_shards, tmp_path / "shards", "train", corrupt_first_jpeg)
    p = launch("--nodes", "2", "--tasks-per-node", "1", "--time", "10", "--folder", str(tmp_path / "logs" / "%j"), "--wait",
               "--", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--epochs", "1", *TRAIN)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    line = last_line(p.stderr)
    assert re.search(rf"job \d+ ended in state FAILED: rank [01]: lift-dist train: error: sample '\d+' in {tar}: image cannot be "
                     r"decoded", line), line


def test_no_sbatch_suggests_local(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    p = launch_checks("--nodes", "2", "--", "--shards", "x", env=run_env() | {"PATH": str(bin_dir)})
    assert p.returncode == 2 and "no `sbatch` on PATH" in p.stderr and "--local" in p.stderr


def test_dry_run_prints_the_sbatch_script_without_slurm(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with python and nothing of Slurm (no srun, sbatch, sinfo)
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    p = launch_checks("--nodes", "4", "--tasks-per-node", "2", "--partition", "debug", "--time", "30", "--dry-run",
               "--folder", str(tmp_path / "l" / "%j"), "--", "--preset", "places_lt", "--shards", "/data/s", "--out", "/runs/r",
               env=run_env(PATH=str(bin_dir)))
    assert p.returncode == 0, p.stderr
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=2", "#SBATCH --partition=debug", "#SBATCH --time=30",
                 "#SBATCH --requeue", "srun --kill-on-bad-exit=1 "):
        assert line in p.stdout, line
    assert re.search(r"trains from /runs/r/launch-[0-9-]+-[0-9a-f]{6}\.yaml \(resume: latest; run directory /runs/r\)", p.stdout)
    assert not (tmp_path / "l").exists()  # nothing submitted, nothing written
    # The settings are checked all the same.
    p = launch_checks("--dry-run", "--", "--preset", "places_lt", "--shards", "/data/s", "--set", "optim.loss=lsa",
               env=run_env(PATH=str(bin_dir)))
    assert p.returncode == 2 and "optim.loss='lsa' is not valid" in p.stderr and "Traceback" not in p.stderr


def test_launched_prediction_is_checked_before_submission(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    env = run_env(PATH=str(bin_dir))
    p = launch_checks("--nodes", "2", "--dry-run", "--", "predict", "--run", "/runs/r", "--shards", "/data/s", "--out", "/p.parquet",
                      env=env)
    assert p.returncode == 0 and "#SBATCH --nodes=2" in p.stdout
    assert "# lift-dist predict --run /runs/r --shards /data/s --out /p.parquet" in p.stdout
    p = launch_checks("--dry-run", "--", "predict", "--run", "/runs/r", "photo.jpg", env=env)
    assert p.returncode == 2 and "a launched predict job predicts a shard split: give --shards DIR" in p.stderr
    p = launch_checks("--local", "--", "predict", "--run", "/runs/r", "--shards", str(tmp_path / "none"), "--out", "p.parquet", env=env)
    assert p.returncode == 2 and str(tmp_path / "none") in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.slow
def test_local_executor_runs_the_same_path(demo_shards, tmp_path):
    p = launch("--local", "--nodes", "1", "--tasks-per-node", "2", "--folder", str(tmp_path / "l" / "%j"), "--wait",
               "--", "--shards", str(demo_shards), "--out", str(tmp_path / "run"), "--epochs", "1", *TRAIN,
               "--set", "data.tte=false")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world_size"] == 2


class Succeeds(Task):
    def run(self):
        return 7


class Fails(Task):
    def run(self):
        raise ValueError("bad\nvalue")


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def local_job(tmp_path, task):
    """`task` on two tasks of submitit's local executor, finished (the test module's classes travel by value)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs" / "%j")
    executor.update_parameters(nodes=1, tasks_per_node=2, timeout_min=5)
    job = executor.submit(task)
    deadline = time.time() + 120
    while not job.done() and time.time() < deadline:
        time.sleep(0.2)
    return job


def test_wait_reads_each_tasks_outcome_file_never_the_pickled_result(tmp_path, capsys):
    job = local_job(tmp_path, Succeeds())
    assert [json.loads(outcome_file(job.paths.folder, job.job_id, t).read_text()) for t in range(2)] == [{"ok": True}] * 2
    # The job folder was handed over: its result pickles now run code when loaded.
    marker = tmp_path / "unpickled"
    for t in range(2):
        job.task(t).paths.result_pickle.write_bytes(pickle.dumps(RunsCodeWhenUnpickled(marker)))
    assert follow(job, local=True) == 0 and "finished successfully" in capsys.readouterr().out
    assert not marker.exists()

    outcome = outcome_file(job.paths.folder, job.job_id, 1)
    outcome.write_text("[true]")
    assert follow(job, local=True) == 1
    assert f"rank 1's outcome file {outcome} is not an outcome record" in capsys.readouterr().err
    outcome.unlink()
    assert follow(job, local=True) == 1
    assert f"rank 1 recorded no outcome ({outcome} is missing" in capsys.readouterr().err
    assert not marker.exists()


def test_wait_names_a_tasks_recorded_error(tmp_path, capsys):
    job = local_job(tmp_path, Fails())
    assert follow(job, local=True) == 1
    assert "ended in state FINISHED: rank 0: ValueError: bad value" in capsys.readouterr().err
