"""The process group (gloo on CPU, NCCL on GPU, through DeepSpeed) for whichever launcher started us
(lift_dist.engine.launcher_env), and the small collectives the trainer uses on CPU tensors."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist

from lift_dist.engine.launcher_env import detect
from lift_dist.errors import ConfigError


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    rank, world, local, launcher = detect()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no CUDA GPU is visible")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        if not use_cuda:
            without_cpu_shm_op()
        deepspeed.init_distributed(
            dist_backend=backend, auto_mpi_discovery=False, timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    return DistInfo(rank, world, local, dev, backend, launcher)


def without_cpu_shm_op() -> None:
    """DeepSpeed JIT-compiles its shared-memory CPU communication op (deepspeed_shm_comm) into the shared
    ~/.cache/torch_extensions at the first CPU start: environments sharing a home directory rebuild it
    in turn, ranks wait on its lock file, and a build killed midway leaves a lock every later run waits
    on for ever. The op only serves DeepSpeed's inference all-reduce, never training (which all-reduces
    through gloo), so it is marked unavailable: no build, no lock, a deterministic start."""
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # DeepSpeed keeps one dict; edits persist


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
