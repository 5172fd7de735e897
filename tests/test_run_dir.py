"""A run directory belongs to one run: rejected commands write nothing, a fresh start never clobbers a
run, resumes are checked against the data, damaged checkpoints give way to complete ones, a second
training on the same directory is refused while the first runs, and SIGTERM checkpoints before exit."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from support.runs import REPO, TINY, cli_cmd, free_port, last_line, run_cli, run_env, run_in_process, timed_cli, tree_digest

from lift_dist.errors import SECONDARY, RunDirError
from lift_dist.run_dir import RunLock
from lift_dist.shards import build_image_folder
from lift_dist.synthetic import write_image_folder

pytestmark = pytest.mark.slow


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def finished(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


@pytest.mark.parametrize("args, message", [
    (["--peft", "loraa"], "model.peft[0]='loraa' is not valid"),
    (["--set", "model.r=-1"], "model.r=-1 is not valid: Input should be greater than or equal to 1"),
    (["--shards", "/nonexistent/shards"], "shard directory /nonexistent/shards does not exist"),
    (["--set", "optim.lr=-1"], "optim.lr=-1 is not valid: Input should be greater than 0"),
    ([], "already holds checkpoints of a run (e.g. step-00000026): continue it with --resume latest, or start a new run"),
])
def test_rejected_commands_leave_a_finished_run_untouched(finished, args, message):
    before = tree_digest(finished)
    p, seconds = timed_cli("train", "--config", str(finished / "config.yaml"), "--out", str(finished), *args)
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in last_line(p.stderr) and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert seconds < 10, f"the error took {seconds:.1f} s"
    assert tree_digest(finished) == before


def test_resume_on_other_shards_is_refused_even_at_an_epoch_boundary(finished, tmp_path):
    diff = tmp_path / "diff"
    write_image_folder(diff / "img", [20] * 10, size=48, seed=9)  # as many classes, other images
    build_image_folder(diff / "img", diff / "shards", "train", shard_size=40, seed=0, progress=False)
    build_image_folder(diff / "img", diff / "shards", "test", train_counts_from=diff / "shards", shard_size=40, progress=False)
    before = tree_digest(finished)
    p = run_cli("train", "--config", str(finished / "config.yaml"), "--out", str(finished), "--shards", str(diff / "shards"),
                "--resume", "latest", "--set", "optim.epochs=3")
    assert p.returncode == 2 and "was trained on other data (train_shards differ" in last_line(p.stderr), p.stderr[-2000:]
    assert tree_digest(finished) == before


@pytest.mark.parametrize("args, message", [
    (["--peft", "lora"], 'was trained with another model (model.peft ["adaptformer"] -> ["lora"]); resume with the run\'s own'),
    (["--set", "model.r=2"], "was trained with another model (model.r null -> 2)"),
    (["--set", "optim.zero_stage=1"], "was written with optim.zero_stage=0, and this run has 1"),
])
def test_a_resume_with_another_model_is_named_before_anything_starts_and_changes_nothing(finished, args, message):
    before = tree_digest(finished)
    p, seconds = timed_cli("train", "--config", str(finished / "config.yaml"), "--out", str(finished), "--resume", "latest",
                           "--set", "optim.epochs=3", *args)
    assert p.returncode == 2 and message in last_line(p.stderr) and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert seconds < 10, f"the error took {seconds:.1f} s"  # before the process group and the model build
    assert tree_digest(finished) == before  # config.yaml too


@pytest.mark.parametrize("command, out, message", [
    ("export", "checkpoints/step-00000026/trainable.safetensors", "would replace part of the run"),
    ("export", "config.yaml", "would replace part of the run"),
    ("export", "metrics.json/model.safetensors", "is not a folder this user can write to"),
    ("export", "checkpoints", "is a directory; give the path of a file"),
    ("predict", "SHARDS/test-shards.parquet", "would replace a file of the shard set"),
    ("predict", "SHARDS/shard-test-000000.tar", "would replace a file of the shard set"),
    ("predict", "classes.json", "would replace part of the run"),
])
def test_an_output_that_would_replace_an_input_is_refused_before_any_work(finished, demo_shards, command, out, message):
    out = out.replace("SHARDS", str(demo_shards)) if out.startswith("SHARDS") else str(finished / out)
    before, shards_before = tree_digest(finished), tree_digest(demo_shards)
    args = ["--shards", str(demo_shards), "--split", "test"] if command == "predict" else ["--format", "safetensors"]
    p = run_in_process(command, "--run", str(finished), *args, "--out", out)
    assert p.returncode == 2 and message in last_line(p.stderr) and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert tree_digest(finished) == before and tree_digest(demo_shards) == shards_before


def test_damaged_latest_checkpoint_gives_way_to_the_previous_one(finished, tmp_path):
    ckpts = sorted(p for p in (finished / "checkpoints").iterdir() if p.is_dir())
    assert [p.name for p in ckpts] == ["step-00000013", "step-00000026"]
    marker = tmp_path / "pwned"
    (ckpts[-1] / "rank-0.json").write_bytes(pickle.dumps(Evil(marker)))
    p = run_cli("train", "--config", str(finished / "config.yaml"), "--out", str(finished), "--resume", "latest",
                "--set", "data.tte=false")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{ckpts[-1] / 'rank-0.json'} is damaged" in p.stdout and "instead" in p.stdout
    assert "resumed from " + str(ckpts[0]) in p.stdout
    assert not marker.exists()
    assert json.loads((finished / "metrics.json").read_text())["steps"] == 26


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_one_training_per_run_directory_and_sigterm_checkpoints(demo_shards, tmp_path):
    run = tmp_path / "busy"
    args = ["train", "--shards", str(demo_shards), "--out", str(run), *TINY, "--epochs", "40", "--batch-size", "8",
            "--set", "data.tte=false", "--set", "eval_every_epochs=0"]
    first = subprocess.Popen(cli_cmd(*args), cwd=REPO, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: (run / "lock").is_file() and "lift-dist train:" in (run / "log.txt").read_text()
                         if (run / "log.txt").is_file() else False)
        second = run_cli(*args, "--resume", "latest")
        assert second.returncode == 2
        assert f"run directory {run} is in use by another training (pid {first.pid} on {socket.gethostname()}" \
            in last_line(second.stderr), second.stderr[-2000:]
        first.send_signal(signal.SIGTERM)  # as Slurm does at preemption and at the time limit
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in out
    assert "lift-dist train: stopped: by SIGTERM; checkpoint" in last_line(err) and "continue with --resume latest" in last_line(err)
    assert not (run / "lock").exists()  # released on exit
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip() / "state.json").read_text())
    assert state["global_step"] >= 1 and not (run / "metrics.json").exists()
    # A lock left by a process that is gone is stale: the next training takes it over and says so.
    (run / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "launch": "pid:gone", "time": 0}))
    p = run_cli(*args, "--resume", "latest", "--set", f"max_steps={state['global_step'] + 1}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"took over the stale lock of {run} (pid {2**22 + 7} is gone)" in p.stdout


def test_a_lock_refused_on_rank_0_stops_every_rank_of_a_launch_without_a_launcher(demo_shards, tmp_path):
    """Rank 0 takes the lock once the process group exists; the check before it passes a lock that cannot
    be read yet (as while another launch writes it), and then rank 0 is refused. Two ranks started as srun
    starts them, with no launcher to end the other rank: both stop with exit 2, rank 0 naming the lock and
    rank 1 pointing at rank 0's line. Before, rank 1 died at a barrier on the broken connection (exit 1)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "lock").write_text('{"host": "node1", "pi')
    args = ["train", "--shards", str(demo_shards), "--out", str(run), *TINY, "--epochs", "1", "--set", "data.tte=false"]
    port = str(free_port())
    procs = [subprocess.Popen(cli_cmd(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=run_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 2], errs
    assert f"could not take the lock {run / 'lock'}: it is unreadable" in last_line(errs[0]), errs[0][-2000:]
    assert f"rank 0: could not take the lock {run / 'lock'}" in last_line(errs[1]) and last_line(errs[1]).endswith(SECONDARY)
    assert sorted(p.name for p in run.iterdir()) == ["lock"] and (run / "lock").read_text() == '{"host": "node1", "pi'


def test_a_stale_lock_of_another_node_is_judged_with_one_squeue_call(tmp_path, monkeypatch):
    """A lock of a Slurm job on another node: squeue (here a script that logs its calls and answers as
    for a finished job) is asked once, and the note says why the lock was taken over."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    answer = "slurm_load_jobs error: Invalid job id specified"
    (bin_dir / "squeue").write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "{answer}" >&2\nexit 1\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    path = tmp_path / "run" / "lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"host": "node-gone", "pid": 7, "launch": "slurm:4242.0:0", "slurm_job": "4242", "time": 0}))
    lock = RunLock(path, "pid:here")
    assert lock.acquire() == f"took over the stale lock of {path.parent} (Slurm job 4242 no longer runs)"
    assert calls.read_text().splitlines() == ["-h -j 4242 -o %T"]
    lock.release()
    assert not path.exists()


@pytest.mark.parametrize("record, outcome", [
    ("[]", "unreadable"),
    ('{"host": "HERE", "launch": "pid:old"}', "took over the stale lock of RUN (it names no process (pid None))"),
    ('{"host": "HERE", "pid": "12", "launch": "pid:old"}', "took over the stale lock of RUN (it names no process (pid '12'))"),
    ('{"host": "HERE", "pid": true, "launch": "pid:old"}', "took over the stale lock of RUN (it names no process (pid True))"),
    ('{"host": "node-gone", "pid": 7, "launch": "slurm:1", "slurm_job": 4242}', "took over the stale lock of RUN (Slurm job 4242 "),
    ('{"host": "node-busy", "pid": 7, "launch": "slurm:2", "time": "noon"}',
     "in use by another training (pid 7 on node-busy, since time 'noon')"),
], ids=["not-a-record", "no-pid", "text-pid", "true-pid", "numeric-job", "text-time"])
def test_a_malformed_lock_is_named_or_taken_over_never_a_crash(tmp_path, record, outcome, monkeypatch):
    """Lock records no lift-dist wrote (edited, or from another tool): each gives a line or a takeover
    note, never an AttributeError / ValueError / TypeError (which rank 0 would die on)."""
    monkeypatch.setenv("PATH", "/nonexistent")  # no squeue: a job on another node cannot be judged...
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # ...except this very job, requeued
    path = tmp_path / "lock"
    path.write_text(record.replace("HERE", socket.gethostname()))
    lock = RunLock(path, "pid:new")
    if outcome == "unreadable":
        with pytest.raises(RunDirError, match=f"could not take the lock {path}: it is unreadable"):
            lock.acquire(attempts=3)
        assert path.read_text() == record  # left as it was, for the user to look at
    elif outcome.startswith("in use"):  # another node, no Slurm job named: it may still train there
        with pytest.raises(RunDirError, match=re.escape(outcome)):
            lock.acquire()
    else:
        assert lock.acquire().startswith(outcome.replace("RUN", str(tmp_path)))
        assert json.loads(path.read_text())["launch"] == "pid:new"


def test_release_leaves_a_lock_that_replaced_this_ones(tmp_path):
    """Another worker of the same launch (torchrun restarts them with the same launch id) took the lock
    over: this process's release must not delete it."""
    path = tmp_path / "lock"
    lock = RunLock(path, "torchrun:job:127.0.0.1:29500")
    assert lock.acquire() is None and lock.held
    replaced = json.loads(path.read_text()) | {"pid": os.getpid() + 1, "time": time.time() + 1}
    path.write_text(json.dumps(replaced))
    lock.release()
    assert json.loads(path.read_text()) == replaced
    mine = RunLock(tmp_path / "lock2", "pid:me")
    mine.acquire()
    mine.release()
    assert not (tmp_path / "lock2").exists()


def _take_lock(path, launch, barrier, results):
    try:
        barrier.wait(timeout=60)
        RunLock(path, launch).acquire()
        results.put((launch, "held"))
    except RunDirError as e:
        results.put((launch, str(e)))
    except BaseException as e:  # anything else fails the test by name instead of hanging the others
        results.put((launch, repr(e)))
    barrier.wait(timeout=60)  # the winner's pid stays alive (its lock live) until every launch has tried


@pytest.mark.parametrize("stale", [False, True], ids=["no-lock", "stale-lock"])
def test_of_launches_starting_at_once_exactly_one_takes_the_lock(tmp_path, stale):
    """Six launches released at the same instant, into a fresh directory or one with a dead
    process's lock: one trains, the others are refused by name, and the lock is the winner's."""
    ctx = multiprocessing.get_context("fork")  # nothing but the lock code runs in the children
    for round_ in range(4):
        path = tmp_path / f"run{round_}" / "lock"
        if stale:
            path.parent.mkdir()
            path.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "launch": "pid:gone", "time": 0}))
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_take_lock, args=(path, f"pid:race:{i}", barrier, results), daemon=True) for i in range(6)]
        for p in procs:
            p.start()
        try:
            outcome = dict(results.get(timeout=120) for _ in procs)
        finally:
            for p in procs:
                p.join(timeout=60)
                p.kill()
        held = [launch for launch, what in outcome.items() if what == "held"]
        assert len(held) == 1, outcome
        assert all("is in use by another training" in what for what in outcome.values() if what != "held"), outcome
        assert json.loads(path.read_text())["launch"] == held[0]
        assert [p.name for p in path.parent.iterdir()] == ["lock"]  # no private file left behind
