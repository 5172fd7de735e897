"""The local Slurm cluster (scripts/slurm/cluster.sh) behaves like a real multi-node cluster
for what the launcher relies on: multi-node srun, submitit, sacct-based failure detection,
requeue, preemption signals and the absence of GPUs (~70 s in all).

Skipped when the cluster cannot run here (not root, no apt-get, LIFT_DIST_SLURM=0); see
lift_dist/testing/slurm_cluster.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.slurm_cluster import SlurmCluster

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# The job payloads below live in this test module, which jobs cannot import (tests/ is not a
# package on their sys.path): pickle them by value instead of by module reference.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)


def _executor(folder: Path, cluster: SlurmCluster, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(slurm_partition=cluster.partition, timeout_min=5, cpus_per_task=1, **params)
    return ex


def _wait_done(job, timeout_s: float) -> None:
    """job.done() with a deadline, so a job submitit never sees finishing fails, not hangs."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            state = job.watcher.get_state(job.job_id, mode="force")
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout_s}s (sacct state {state})")
        time.sleep(0.5)


def _final_state(job, timeout_s: float = 30) -> str:
    """The job's state as sacct reports it once the job has ended (the result pickle can
    appear before slurmdbd records the end; job.state is a cached value)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = job.watcher.get_state(job.job_id, mode="force")
        if job.watcher.is_done(job.job_id, mode="cache") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


# --- job payloads (run on the cluster) ----------------------------------------------------------
def _rank_report() -> dict:
    env = os.environ
    nodelist = env["SLURM_JOB_NODELIST"]
    hostnames = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    return {
        "rank": int(env["SLURM_PROCID"]),
        "world": int(env["SLURM_NTASKS"]),
        "local_rank": int(env["SLURM_LOCALID"]),
        "node": env["SLURMD_NODENAME"],
        "job_id": env["SLURM_JOB_ID"],
        "hostnames": hostnames,
        "addresses": sorted({socket.gethostbyname(h) for h in hostnames}),
    }


def _die_without_result(how: str) -> None:
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


def _count_runs(counter: str, hold_s: float) -> tuple[int, str | None]:
    with open(counter, "a") as f:
        f.write(f"{os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
    runs = len(Path(counter).read_text().splitlines())
    if runs == 1:
        time.sleep(hold_s)  # first run: wait here to be requeued
    return runs, os.environ.get("SLURM_RESTART_COUNT")


# --- tests --------------------------------------------------------------------------------------
def test_cluster_shape(slurm_cluster: SlurmCluster):
    out = _run("sinfo", "-h", "-N", "-p", slurm_cluster.partition, "-o", "%N %T %c").stdout
    nodes = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert sorted(nodes) == ["n1", "n2", "n3", "n4"], out
    assert all(int(cpus) >= 2 for _, cpus in nodes.values()), out
    for name in nodes:  # a gloo/NCCL rendezvous on MASTER_ADDR=n1 needs these
        assert socket.gethostbyname(name) == "127.0.0.1"
    conf = _run("scontrol", "show", "config").stdout
    assert "JobRequeue              = 1" in conf
    assert "accounting_storage/slurmdbd" in conf
    # Accounting answers (submitit's job-state polling depends on sacct).
    assert _run("sacct", "-n", "-X", "-o", "JobID").returncode == 0
    assert "lift" in _run("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster").stdout.split()


def test_gpu_request_is_rejected_by_slurm(slurm_cluster: SlurmCluster, tmp_path: Path):
    r = _run("sbatch", "--gpus-per-node", "1", "-o", str(tmp_path / "out"), "--wrap", "true", check=False)
    assert r.returncode != 0
    assert "Invalid generic resource (gres) specification" in r.stderr


def test_srun_one_task_per_node(slurm_cluster: SlurmCluster):
    script = (
        "echo $SLURM_PROCID $SLURM_NTASKS $SLURM_LOCALID $SLURMD_NODENAME $SLURM_JOB_ID "
        "$(scontrol show hostnames $SLURM_JOB_NODELIST | tr '\\n' ,)"
    )
    r = _run("srun", "-p", slurm_cluster.partition, "--nodes", "4", "--ntasks-per-node", "1",
             "-t", "1", "bash", "-c", script)
    rows = sorted(line.split() for line in r.stdout.splitlines())
    assert [row[0] for row in rows] == ["0", "1", "2", "3"], r.stdout
    assert {row[1] for row in rows} == {"4"} and {row[2] for row in rows} == {"0"}
    assert sorted(row[3] for row in rows) == ["n1", "n2", "n3", "n4"]
    assert len({row[4] for row in rows}) == 1  # one job
    assert {row[5] for row in rows} == {"n1,n2,n3,n4,"}


def test_submitit_four_nodes_one_task_each(slurm_cluster: SlurmCluster, tmp_path: Path):
    ex = _executor(tmp_path, slurm_cluster, nodes=4, tasks_per_node=1, name="lift-4n")
    job = ex.submit(_rank_report)
    _wait_done(job, 120)
    reports = job.results()
    assert sorted(r["rank"] for r in reports) == [0, 1, 2, 3]
    assert sorted(r["node"] for r in reports) == ["n1", "n2", "n3", "n4"]
    assert {r["world"] for r in reports} == {4}
    assert {r["local_rank"] for r in reports} == {0}
    assert {r["job_id"] for r in reports} == {job.job_id}
    assert all(r["hostnames"] == ["n1", "n2", "n3", "n4"] for r in reports)
    assert all(r["addresses"] == ["127.0.0.1"] for r in reports)
    assert _final_state(job) == "COMPLETED"


def test_job_dying_without_result_is_reported_failed(slurm_cluster: SlurmCluster, tmp_path: Path):
    ex = _executor(tmp_path, slurm_cluster, nodes=1, tasks_per_node=1, name="lift-die")
    jobs = {how: ex.submit(_die_without_result, how) for how in ("exit", "sigkill")}
    for how, job in jobs.items():
        _wait_done(job, 120)  # only sacct can tell submitit that this job is over
        assert not job.paths.result_pickle.exists()
        assert _final_state(job) == "FAILED", how
        job._results_timeout_s = 1  # submitit otherwise waits 15 s for a late result pickle
        with pytest.raises(submitit.core.utils.UncompletedJobError, match="state: FAILED"):
            job.result()


def test_scontrol_requeue_restarts_running_job(slurm_cluster: SlurmCluster, tmp_path: Path):
    counter = tmp_path / "runs"
    ex = _executor(tmp_path, slurm_cluster, nodes=1, tasks_per_node=1, name="lift-requeue")
    job = ex.submit(_count_runs, str(counter), 300)
    deadline = time.monotonic() + 120
    while not (counter.exists() and counter.read_text()):
        assert time.monotonic() < deadline, f"job never started (state {job.state})"
        time.sleep(0.25)
    _run("scontrol", "requeue", job.job_id)
    _wait_done(job, 120)  # the requeued job may restart cred_expire (20 s) after the requeue
    assert job.result() == (2, "1")
    assert counter.read_text().split() == ["0", "1"]
    assert _final_state(job) == "COMPLETED"


def test_preemption_signals_submitit_which_requeues(slurm_cluster: SlurmCluster, tmp_path: Path):
    # A job in the preemptible default partition holds n4 exclusively; a 1-CPU job in the
    # `urgent` partition needs n4, so only our job is preempted (other users of the cluster are
    # not). Slurm sends the job's --signal (submitit: USR2@90) at once; submitit's handler
    # requeues the job and exits; the job runs again once n4 is free.
    counter = tmp_path / "runs"
    ex = _executor(tmp_path, slurm_cluster, nodes=1, tasks_per_node=1, name="lift-preempted",
                   slurm_additional_parameters={"nodelist": "n4", "exclusive": True})
    # submitit takes a signal in the last 10 min of the time limit for a timeout (no requeue
    # for a plain function) and anything earlier for a preemption: ask for an hour.
    ex.update_parameters(timeout_min=60)
    job = ex.submit(_count_runs, str(counter), 300)
    deadline = time.monotonic() + 120
    while not (counter.exists() and counter.read_text()):
        assert time.monotonic() < deadline, f"job never started (state {job.state})"
        time.sleep(0.25)
    urgent = _run("sbatch", "--parsable", "-p", slurm_cluster.preempt_partition, "-w", "n4",
                  "-n", "1", "-t", "1", "-o", str(tmp_path / "urgent.out"), "--wrap", "sleep 1")
    _wait_done(job, 150)
    assert job.result() == (2, "1")
    assert "this job is preempted" in (job.stderr() or "")
    urgent_state = _run("sacct", "-n", "-X", "-P", "-o", "State", "-j", urgent.stdout.strip()).stdout
    assert urgent_state.split() == ["COMPLETED"]
