"""One sweep trial: an ordinary training run, each Tune iteration one of its epochs.

The driver resolves every trial's RunConfig (`trial_config`) and writes it to SWEEP/trials/trial-k.yaml;
the training reads that file (a local `python -m lift_dist train --config FILE` process, or a Slurm
job of the launcher's TrainTask). The trial follows the run's history.jsonl (one validation line per
epoch) and metrics.json. Trial k of a sweep always trains in SWEEP/runs/trial-k: a retried trial, or
the same trial of a resumed sweep (identity.py), first reports the epochs its run already has, then
resumes that run from its checkpoint or reattaches to its Slurm job if that still runs; a finished
run is not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit
from ray import tune

from lift_dist.commands import launch as launch_command
from lift_dist.config import RunConfig, load_config, save_config
from lift_dist.launch import FINAL_STATES, TrainTask, final_state, first_task_error, make_executor
from lift_dist.lifecycle import die_with_parent
from lift_dist.run_dir import RunDir, write_json
from lift_dist.sweep.space import used_params
from lift_dist.validation import validate

METRICS = ("overall", "mean_class", "head", "medium", "tail")
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def trial_config(base: dict, params: dict, run_dir: Path) -> RunConfig:
    """The base configuration with one point of the space applied (only what its module uses)."""
    data = json.loads(json.dumps(base))  # a deep copy of plain data
    p = used_params(params)
    module = p.get("module")
    if module:
        data["model"]["peft"] = [module]
        data["model"]["r"] = data["model"]["alpha"] = None
    for key, section, kind in (("r", "model", int), ("alpha", "model", float), ("scale", "model", float),
                               ("lr", "optim", float)):
        if key in p:
            data[section][key] = kind(p[key])  # Tune may hand numpy scalars
    if "length" in p:
        data["model"].setdefault("peft_options", {})[module or data["model"]["peft"][0]] = {"length": int(p["length"])}
    data["out"], data["resume"] = str(run_dir), "latest"
    return validate(RunConfig, data, prefix="")


class LocalBackend:
    """The trial's training as a child process of the Ray worker (and dying with it)."""

    def __init__(self, run: RunDir, cpus: int):
        self.run, self.cpus, self.proc = run, cpus, None

    def start(self, config_file: Path) -> None:
        self.run.create()
        env = dict(os.environ, OMP_NUM_THREADS=str(self.cpus))
        # A local trial is one process of its own, even when the driver runs inside a Slurm job.
        for k in [k for k in env if k.startswith("SLURM_") or k in LAUNCH_ENV]:
            env.pop(k)
        with open(self.run.file("train.log"), "a") as log:  # the child keeps its own descriptor; a reused actor none
            self.proc = subprocess.Popen([sys.executable, "-m", "lift_dist", "train", "--config", str(config_file)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def failure(self) -> str | None:
        if self.proc is None or self.proc.returncode == 0:
            return None
        return f"training exited with {self.proc.returncode}; see {self.run.file('train.log')}"

    def stop(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGTERM)  # the trainer checkpoints, then exits
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


MAX_TASKS = 100_000  # a job record naming more tasks is not one this backend wrote


class SlurmBackend:
    """The trial's training as a Slurm job through the launcher."""

    def __init__(self, run: RunDir, launch_args: list[str]):
        self.run, self.launch_args, self.job = run, launch_args, None
        self.record = run.file("slurm-job.json")

    def start(self, config_file: Path) -> None:
        if self._reattach():
            return
        p = argparse.ArgumentParser()
        launch_command.add_arguments(p)
        folder = str(self.run.path / "slurm-%j")
        args = p.parse_args([*self.launch_args, "--folder", folder])
        self.job = make_executor(args).submit(TrainTask(str(config_file)))  # the task resumes itself
        self.run.create()
        write_json(self.record, {"job_id": str(self.job.job_id), "folder": folder, "tasks": self.job.num_tasks})

    def _reattach(self) -> bool:
        """A restored or retried trial takes over its job if that still runs (the driver died, the job did
        not): a second job would train into the same run directory."""
        if not self.record.is_file():
            return False
        try:
            rec = json.loads(self.record.read_text())
            folder, job_id, tasks = Path(rec["folder"]), str(rec["job_id"]), rec.get("tasks", 1)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False  # not a record this backend wrote: submit afresh
        if not job_id.isdigit() or not folder.resolve().is_relative_to(self.run.path.resolve()):
            return False
        if type(tasks) is not int or not 1 <= tasks <= MAX_TASKS:
            return False
        # Every task of the job, as submitted: a failure is then read from each task's log, not task 0's alone.
        job = submitit.SlurmJob(folder=str(folder), job_id=job_id, tasks=range(tasks))
        state = str(job.state).split(" ")[0]  # e.g. "CANCELLED by 0"
        if state not in FINAL_STATES and state != "UNKNOWN":
            self.job = job
            return True
        if state == "UNKNOWN":  # Slurm no longer knows it (purged): make sure it is not running
            job.cancel(check=False)
        return False

    def running(self) -> bool:
        return self.job is not None and not self.job.done()

    def failure(self) -> str | None:
        """Read from Slurm's state and the tasks' text logs, never from submitit's pickled result file
        (the job folder lies in a run directory, which could have been handed over)."""
        if self.job is None:
            return None
        state, error = final_state(self.job), first_task_error(self.job, settle_s=5)
        if state == "COMPLETED" and error is None:
            return None
        return f"Slurm job {self.job.job_id} ended {state}: {error or 'see ' + str(self.job.paths.stderr)}"

    def stop(self) -> None:
        if self.running():
            self.job.cancel(check=False)  # the scheduler stopped this trial: free the allocation


def run_name(trial_id: str) -> str:
    """Tune's trial ids are '<random prefix>_<k>' with k counting the trials in the order the seeded search
    makes them: `trial-<k>` names the same trial in every run of the driver."""
    return f"trial-{trial_id.rsplit('_', 1)[-1]}"


class LiftTrial(tune.Trainable):
    def setup(self, config: dict):
        self.params = {k: v for k, v in config.items() if not k.startswith("_")}
        self.metric, self.epochs = config["_metric"], config["_epochs"]
        # Runs live under SWEEP/runs/trial-k, not in Ray's (possibly staged) trial directory.
        name = run_name(self.trial_id)
        self.run = RunDir(Path(config["_sweep"]) / "runs" / name)
        self.config_file = Path(config["_sweep"]) / "trials" / f"{name}.yaml"
        cfg = trial_config(config["_base"], self.params, self.run.path)
        if not self.config_file.is_file():
            self.config_file.parent.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.config_file)
        elif load_config(config_file=str(self.config_file)) != cfg:  # sweep.json matched, so the file was edited
            raise RuntimeError(f"{self.config_file} no longer holds this trial's settings ({self.params}); "
                               "restore it, or start a new sweep in another --out")
        cpus = max(1, int(config.get("_cpus") or 1))
        self.backend = (SlurmBackend(self.run, config["_launch_args"]) if config["_backend"] == "slurm"
                        else LocalBackend(self.run, cpus))
        self.reported, self.started = 0, False

    def step(self) -> dict:
        while True:
            running = self.backend.running()  # read before the files: what a finished run wrote is then seen
            hist = self.run.read_history()
            while self.reported < len(hist) and "eval" not in hist[self.reported]:
                self.reported += 1  # an epoch without evaluation (the last: metrics.json follows)
            if self.reported < len(hist):  # also the epochs a resumed sweep's run already has: reported again
                h = hist[self.reported]
                self.reported += 1
                return {self.metric: h["eval"][self.metric], "epoch": h["epoch"], "loss": h["loss"], **h["eval"]}
            if self.run.finished and (not running or len(hist) >= self.epochs):
                m = self.run.read_metrics()
                return {self.metric: m[self.metric], "epoch": m["epochs"], "loss": hist[-1]["loss"] if hist else None,
                        "done": True, **{k: m[k] for k in METRICS}}
            if not self.started:  # only now: a scheduler that stops the trial on what was reported starts nothing
                self.backend.start(self.config_file)
                self.started = True
                continue
            if not running:
                raise RuntimeError(self.backend.failure() or "training ended without metrics")
            time.sleep(0.5)

    def reset_config(self, new_config: dict) -> bool:
        """Ray hands this actor the next trial (TuneConfig.reuse_actors): the previous trial's training is
        stopped (ASHA may have ended it early) and the new one starts, without a new actor's imports."""
        self.backend.stop()
        self.setup(new_config)
        return True

    def save_checkpoint(self, checkpoint_dir: str):
        Path(checkpoint_dir, "trial.json").write_text(json.dumps({"run_dir": str(self.run.path), "reported": self.reported}))
        return checkpoint_dir

    def load_checkpoint(self, checkpoint):
        state = json.loads(Path(checkpoint, "trial.json").read_text())
        self.reported = state["reported"]

    def cleanup(self):
        self.backend.stop()
