"""tune/sweep.py: real Ray Tune sweeps of real training runs (local processes or Slurm jobs)."""

import argparse
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cloudpickle
import pyarrow.parquet as pq
import pytest
import submitit
import yaml
from support.runs import REPO, run_env, run_in_process

from lift_dist.commands import sweep as sweep_command
from lift_dist.config import load_config
from lift_dist.errors import ConfigError, DataError
from lift_dist.run_dir import RunDir
from lift_dist.sweep import driver
from lift_dist.sweep.holdout import make_holdout
from lift_dist.sweep.identity import claim_identity, sweep_identity
from lift_dist.sweep.space import SIZE_DIMENSIONS, load_space, size_dimension, used_params
from lift_dist.sweep.trial import SlurmBackend

SWEEP = [sys.executable, str(REPO / "tune" / "sweep.py")]
TINY = ["--set", "model.name=tiny", "--set", "model.pretrained=null", "--set", "device=cpu", "--set", "data.workers=1",
        "--set", "optim.batch_size=16", "--set", "data.tte_expand=8", "--set", "data.shuffle_buffer=50"]


def sweep(*args, timeout=900, check=True):
    p = subprocess.run([*SWEEP, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=run_env())
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_local_asha_sweep_over_alpha_r_sigma(demo_shards, tmp_path):
    out = tmp_path / "sweep"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"lr": {"choice": [0.02, 0.05]}}))  # restrict lr; α, r, σ, module from the default space
    sweep("--shards", str(demo_shards), "--out", str(out), "--space", str(space), "--num-samples", "4", "--ray-cpus", "2",
          "--max-concurrent", "1", "--val-per-class", "2", "--scheduler", "asha", "--seed", "1", *TINY, "--set", "optim.epochs=3")
    table = pq.read_table(out / "results.parquet").to_pydict()
    assert len(table["trial_id"]) == 4
    for col in ("module", "alpha", "r", "scale", "lr", "mean_class", "tail", "status", "run_dir"):
        assert col in table
    assert set(table["lr"]) <= {0.02, 0.05}
    assert all(15 <= s <= 35 for s in table["scale"])
    # α is set exactly for the sparse trials, r exactly for the r-sized ones.
    for m, a, r in zip(table["module"], table["alpha"], table["r"]):
        assert (a is not None) == (m == "sparse") and (r is not None) == (m != "sparse")
        if a is not None:
            assert 1e-3 <= a <= 1e-1
    assert "stopped" in table["status"] and "completed" in table["status"]  # ASHA ended some trials early
    # The objective came from the held-out split of the training shards, not the test set.
    held = out / "data"
    assert (held / "val-shards.parquet").is_file()
    train_total = sum(pq.read_table(demo_shards / "train-shards.parquet").to_pydict()["num_samples"])
    parts = [sum(pq.read_table(held / f"{s}-shards.parquet").to_pydict()["num_samples"]) for s in ("train", "val")]
    assert sum(parts) == train_total and parts[1] > 0
    best = load_config(config_file=str(out / "best.yaml"))
    assert best.data.shards == str(demo_shards) and best.data.eval_split == "test"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["split"] == "test" and summary["completed"] >= 1 and summary["test"]["device"] == "cpu"
    assert (out / "metric_vs_params.png").stat().st_size > 1000
    # --max-concurrent 1: no two trainings ever overlapped (Ray ignored the limit beside a search algorithm).
    spans = sorted(_training_span(Path(r)) for r in table["run_dir"])
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    for r in table["run_dir"]:  # every trial trained from a resolved config file, not from re-parsed arguments
        assert (out / "trials" / f"{Path(r).name}.yaml").is_file()


def _training_span(run: Path) -> tuple[float, float]:
    """From when a trial's training wrote its config.yaml (once, at start) to its last write."""
    return (run / "config.yaml").stat().st_mtime, max(p.stat().st_mtime for p in run.rglob("*") if p.is_file())


@pytest.mark.slow
def test_killed_driver_resumes_and_finishes_every_trial(demo_shards, tmp_path):
    out = tmp_path / "sweep"
    args = ["--shards", str(demo_shards), "--out", str(out), "--num-samples", "3", "--ray-cpus", "2", "--max-concurrent", "1",
            "--val-per-class", "2", "--scheduler", "fifo", *TINY, "--set", "optim.epochs=2"]
    proc = subprocess.Popen([*SWEEP, *args], cwd=REPO, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 400
    finished = []
    while time.time() < deadline:
        finished = list((out / "runs").glob("*/metrics.json")) if (out / "runs").is_dir() else []
        if finished:
            break
        time.sleep(0.5)
    assert finished
    stamps = {p: p.stat().st_mtime for p in finished}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    assert not (out / "results.parquet").exists()
    # Ray's experiment state is pickled: a sweep directory one was handed could run code on resume.
    marker = tmp_path / "ran-code"
    planted = [out / "tune" / "tuner.pkl", *(out / "tune").glob("*.pkl"), *(out / "tune").glob("*/*.pkl")]
    for f in planted:
        f.write_bytes(pickle.dumps(_OpensAFile(str(marker))))
    configs = {f.name: f.read_text() for f in (out / "trials").glob("*.yaml")}
    sweep(*args, "--resume")
    assert not marker.exists()
    table = pq.read_table(out / "results.parquet").to_pydict()
    assert sorted(table["trial_id"]) == ["trial-00000", "trial-00001", "trial-00002"] and set(table["status"]) == {"completed"}
    for p, t in stamps.items():  # trials finished before the kill were not run again
        assert p.stat().st_mtime == t
    for name, text in configs.items():  # and each trial kept its point of the space (the search is seeded)
        assert (out / "trials" / name).read_text() == text
    assert all(json.loads((Path(r) / "metrics.json").read_text())["epochs"] == 2 for r in table["run_dir"])


class _OpensAFile:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _sweep_args(demo_shards, out, *more):
    return ["--shards", str(demo_shards), "--out", str(out), "--num-samples", "3", "--scheduler", "fifo", *TINY, *more]


def _start_record(args: list[str]) -> dict:
    """What the driver records when a sweep starts (its steps before the hold-out split and Ray)."""
    p = argparse.ArgumentParser()
    sweep_command.add_arguments(p)
    a = p.parse_args(args)
    full = driver.base_config(a, Path(a.shards).absolute())
    return claim_identity(Path(a.out).absolute(), sweep_identity(a, load_space(a.space), full.model_dump(mode="json"),
                                                                 Path(a.shards).absolute()), resume=False)


@pytest.mark.parametrize("change, message", [
    (["--set", "optim.lr=0.5"], "'training.optim.lr' was 0.02 when the sweep started and is 0.5 now"),
    (["--num-samples", "4"], "'num_samples' was 3 when the sweep started and is 4 now"),
    (["--seed", "7"], "'seed' was {seed} when the sweep started and is 7 now"),
    (["--scheduler", "asha"], "'scheduler' was \"fifo\" when the sweep started and is \"asha\" now"),
])
def test_a_resume_that_would_make_other_trials_is_named_before_anything_starts(demo_shards, tmp_path, change, message):
    out = tmp_path / "sweep"
    record = _start_record(_sweep_args(demo_shards, out, "--set", "optim.lr=0.02"))
    assert isinstance(record["seed"], int)  # drawn and recorded: the resumed search samples the same trials
    before = sorted(p.name for p in out.iterdir())
    p = run_in_process("sweep", *_sweep_args(demo_shards, out, "--set", "optim.lr=0.02", *change), "--resume")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert message.format(seed=record["seed"]) in p.stderr and "resume with the settings it started with" in p.stderr
    assert sorted(p.name for p in out.iterdir()) == before == ["sweep.json"]  # no hold-out split, no Ray
    # The recorded seed is the default of a resume; the unchanged arguments pass the check.
    assert claim_identity(out, record | {"seed": None}, resume=True) == record


def test_a_sweep_directory_is_started_once_and_resumed_only_from_its_record(demo_shards, tmp_path):
    out = tmp_path / "sweep"
    p = run_in_process("sweep", *_sweep_args(demo_shards, out), "--resume")
    assert p.returncode == 2 and "holds no sweep.json to resume from (nothing was started there)" in p.stderr, p.stderr
    (out / "tune").mkdir(parents=True)  # a sweep of a lift-dist whose resume unpickled Ray's state
    p = run_in_process("sweep", *_sweep_args(demo_shards, out), "--resume")
    assert p.returncode == 2 and "it was started by an older lift-dist" in p.stderr, p.stderr
    (out / "tune").rmdir()
    first = _start_record(_sweep_args(demo_shards, out))
    # A driver that stopped before any trial (at the hold-out, say) may start again, with other settings.
    second = _start_record(_sweep_args(demo_shards, out, "--num-samples", "4"))
    assert (first["num_samples"], second["num_samples"]) == (3, 4)
    assert "out" not in second["training"] and "resume" not in second["training"]  # the driver's cwd shapes no trial
    (out / "runs").mkdir()  # once a trial has run, the sweep is only ever resumed
    p = run_in_process("sweep", *_sweep_args(demo_shards, out))
    assert p.returncode == 2 and f"--out {out} already holds a sweep; add --resume to continue it" in p.stderr, p.stderr


@pytest.mark.slow
def test_slurm_backend_runs_trials_as_jobs(slurm_cluster, demo_shards, tmp_path):
    out = tmp_path / "sweep"
    sweep("--shards", str(demo_shards), "--out", str(out), "--num-samples", "2", "--ray-cpus", "2", "--backend", "slurm",
          "--launch", "--nodes 2 --tasks-per-node 1 --time 10", "--val-per-class", "2", "--scheduler", "fifo", *TINY,
          "--set", "optim.epochs=2")
    table = pq.read_table(out / "results.parquet").to_pydict()
    assert len(table["trial_id"]) == 2 and set(table["status"]) == {"completed"}
    for run_dir in table["run_dir"]:
        logs = list(Path(run_dir).glob("slurm-*/*_1_log.out"))  # task 1 of a 2-node Slurm job ran
        assert logs, run_dir
        assert json.loads((Path(run_dir) / "metrics.json").read_text())["world_size"] == 2


@pytest.mark.parametrize(
    "space, message",
    [
        ({"sigma": {"uniform": [1, 2]}}, "unknown search dimension 'sigma'; valid: module, alpha, length, r, scale, lr"),
        ({"scale": {"uniform": [30, 20]}}, "needs [low, high] with low < high"),
        ({"r": {"choice": []}}, "choice needs a non-empty list"),
        ({"r": {"choice": [0, 4]}}, "'r': sizes must be >= 1"),
        ({"alpha": {"loguniform": [0.01, 2.0]}}, "the sparse fraction must lie in (0, 1]"),
        ({"module": ["adaptformer", "prefix"]}, "unknown module 'prefix'"),
        ({"lr": {"uniform": ["a", 0.1]}}, "'lr': uniform values must be finite numbers, got ['a', 0.1]"),
        ({"lr": {"loguniform": [0.001, float("inf")]}}, "'lr': loguniform values must be finite numbers"),
        ({"r": {"choice": ["a", "b"]}}, "'r': choice values must be whole numbers"),
        ({"r": {"uniform": [1.5, 7.5]}}, "'r' takes whole sizes: use choice or randint"),
        ({"module": {"choice": [["lora"]]}}, "'module': choices must be module names"),
        ({"scale": {"choice": [20, True]}}, "'scale': choice values must be finite numbers"),
    ],
)
def test_invalid_space_is_named(tmp_path, space, message):
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError) as e:
        load_space(str(f))
    assert message in str(e.value)


def test_the_space_comes_from_the_module_registry():
    # Each method declares the option that sizes it; a sweep dimension applies to those methods only.
    assert SIZE_DIMENSIONS == ["alpha", "length", "r"]
    assert {m: size_dimension(m) for m in ("adaptformer", "adapter", "lora", "sparse", "vpt-deep", "bitfit")} == \
        {"adaptformer": "r", "adapter": "r", "lora": "r", "sparse": "alpha", "vpt-deep": "length", "bitfit": None}
    assert used_params({"module": "sparse", "r": 8, "alpha": 0.01, "lr": 0.1}) == {"module": "sparse", "alpha": 0.01, "lr": 0.1}


def test_an_invalid_space_fails_before_any_trial(demo_shards, tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump({"sigma": {"uniform": [1, 2]}}))
    p = run_in_process("sweep", "--shards", str(demo_shards), "--out", str(tmp_path / "s"), "--space", str(f), *TINY,
                       prog="tune/sweep.py")
    assert p.returncode == 2 and "unknown search dimension 'sigma'" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "s").exists()


def test_missing_shards_and_slurm_without_sbatch(tmp_path):
    p = run_in_process("sweep", "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "s"), *TINY, prog="tune/sweep.py")
    assert p.returncode == 2 and f"shard directory {tmp_path / 'none'} does not exist" in p.stderr
    p = run_in_process("sweep", "--shards", str(tmp_path), "--out", str(tmp_path / "s"), "--backend", "slurm", prog="tune/sweep.py",
                       env=run_env() | {"PATH": str(tmp_path / "no-slurm-here")})
    assert p.returncode == 2 and "--backend slurm needs `sbatch` on PATH" in p.stderr


def test_sweep_plot_copes_with_dimensions_no_trial_used(tmp_path):
    """alpha only applies to sparse trials: a sweep whose trials all drew another module still gets its
    plot (a log axis with no positive values used to abort the summary after every trial had run)."""
    from PIL import Image

    from lift_dist.sweep import plot_results

    rows = [{"module": m, "alpha": None, "r": r, "scale": s, "accuracy": a, "status": "completed"}
            for m, r, s, a in (("adaptformer", 8, 20.0, 0.4), ("lora", 16, 25.0, 0.5))]
    space = {"module": ["adaptformer", "lora", "sparse"], "alpha": {"loguniform": [0.001, 0.1]},
             "r": {"choice": [8, 16]}, "scale": {"uniform": [20, 30]}}
    plot_results(rows, space, "accuracy", tmp_path / "plot.png")
    assert Image.open(tmp_path / "plot.png").size[0] > 0
    rows[0]["r"] = 0  # no log axis for a non-positive value either
    plot_results(rows, space, "accuracy", tmp_path / "plot2.png")
    assert (tmp_path / "plot2.png").stat().st_size > 0


def test_a_trial_actor_imports_neither_the_trainer_nor_the_driver():
    """Every Ray trial actor imports lift_dist.sweep.trial: it must not pull in DeepSpeed, open_clip or the
    driver's shard builder (seconds of start-up per actor)."""
    probe = "import sys, lift_dist.sweep.trial; print(sorted(m for m in ('deepspeed', 'open_clip', 'lift_dist.sweep.driver', " \
            "'lift_dist.shards.builder') if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=run_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize("cls", [b"-1", b"10", b"zero"])
def test_a_shard_label_outside_the_class_table_is_named_by_the_hold_out(demo_shards, tmp_path, cls):
    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards)
    shard = shards / "train-000000.tar"
    with tarfile.open(shard) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    first = next(m for m, _ in members if m.name.endswith(".cls"))
    with tarfile.open(shard, "w") as t:
        for m, data in members:
            data = cls if m is first else data
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    key = first.name.removesuffix(".cls")
    with pytest.raises(DataError, match=re.escape(f"sample '{key}' in {shard}: cls {cls!r} is not a label 0..9")):
        make_holdout(shards, tmp_path / "sweep" / "data", "train", 2, 0)


def _rank_one_fails(seconds: float) -> None:
    """A 2-task job payload: rank 1 stops with a lift-dist error line, rank 0 ends a little later."""
    rank = submitit.JobEnvironment().global_rank
    time.sleep(seconds)
    if rank == 1:
        print("lift-dist train: error: rank one broke", file=sys.stderr, flush=True)
        raise SystemExit(1)
    time.sleep(seconds)


@pytest.mark.slow
def test_a_reattached_trial_job_is_judged_by_every_tasks_log(slurm_cluster, tmp_path):
    # The driver died while its trial's 2-task job ran; the next driver takes the job over from the record.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable by the job
    run = RunDir(tmp_path / "trial-0")
    run.create()
    folder = run.path / "slurm-%j"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=5, cpus_per_task=1, nodes=2,
                               tasks_per_node=1)
    job = executor.submit(_rank_one_fails, 4)
    deadline = time.time() + 60
    while str(job.state).split(" ")[0] != "RUNNING":  # known to sacct: a job it does not know is not taken over
        assert time.time() < deadline, job.state
        time.sleep(0.5)
    (run.path / "slurm-job.json").write_text(json.dumps({"job_id": job.job_id, "folder": str(folder), "tasks": 2}))
    backend = SlurmBackend(run, [])
    backend.start(run.path / "unused.yaml")
    assert backend.job is not None and backend.job.num_tasks == 2
    deadline = time.time() + 120
    while backend.running():
        assert time.time() < deadline
        time.sleep(0.5)
    assert f"Slurm job {job.job_id} ended FAILED: rank 1: lift-dist train: error: rank one broke" in backend.failure()
