"""Rank, world size and rendezvous from each launcher's environment (torchrun, deepspeed, srun)."""

import argparse
import os

import pytest

from lift_dist.commands.train import add_arguments
from lift_dist.engine import launcher_env as distributed

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS",
               "SLURM_LOCALID", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")


@pytest.fixture
def env(monkeypatch):
    """detect() writes RANK, MASTER_ADDR, ... into os.environ itself: restore the whole environment after."""
    saved = dict(os.environ)
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


def test_torchrun_and_deepspeed_launcher(env):
    env.setenv("RANK", "5"), env.setenv("WORLD_SIZE", "8"), env.setenv("LOCAL_RANK", "1")
    assert distributed.detect() == (5, 8, 1, "torchrun")
    # The deepspeed launcher also appends --local_rank=N to the command line; it must not be refused.
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--shards", "s", "--local_rank=1"]).shards == "s"


def test_srun_environment(env):
    env.setenv("SLURM_PROCID", "6"), env.setenv("SLURM_STEP_NUM_TASKS", "8"), env.setenv("SLURM_LOCALID", "2")
    env.setenv("SLURM_STEP_NODELIST", "gpu[07-08]"), env.setenv("SLURM_JOB_ID", "123456")
    env.setattr(distributed.subprocess, "run", _no_scontrol)  # a compute node without scontrol on PATH
    assert distributed.detect() == (6, 8, 2, "slurm")
    assert os.environ["MASTER_ADDR"] == "gpu07"
    assert os.environ["MASTER_PORT"] == str(15000 + 123456 % 15000) and int(os.environ["MASTER_PORT"]) < 32768
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("6", "8", "2")


def _no_scontrol(*args, **kwargs):
    raise FileNotFoundError("scontrol")


@pytest.mark.parametrize("nodelist, first", [("n[1-4]", "n1"), ("gpu[07-12,15],cpu1", "gpu07"), ("hostA,hostB", "hostA"),
                                             ("single", "single")])
def test_first_host_without_scontrol(monkeypatch, nodelist, first):
    monkeypatch.setattr(distributed.subprocess, "run", _no_scontrol)
    assert distributed.slurm_master_addr(nodelist) == first


def test_plain_single_process(env):
    assert distributed.detect()[:3] == (0, 1, 0)
