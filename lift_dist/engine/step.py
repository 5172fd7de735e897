"""What happens around every training micro-step, as hooks the trainer calls at fixed points:

    forward_start -> (forward) -> forward_end(loss) -> (backward) -> backward_end -> (engine.step) -> step_end
    ... once per optimizer step, after its last micro-step: optimizer_step_end

`StepGuard` (always on) all-reduces one small tensor per micro-step: a non-finite loss on any rank and a
stop request (SIGTERM) on any rank, so every rank stops at the same step; after each optimizer step it
checks the trainable weights, which are identical on every rank. `PhaseTimer` (profile_phases=true)
times forward / backward / all-reduce / optimizer, synchronising the device around each phase.
"""

from __future__ import annotations

import time

import torch

from lift_dist.engine.collectives import all_reduce_sum_
from lift_dist.errors import SECONDARY, LiftError


class NonFiniteLoss(LiftError):
    pass


class PeerFailed(LiftError):
    """Another rank stopped on an error of its own at this step. `secondary`: the error file of this
    rank is stamped after that error, so torchrun names the other rank's line as the root cause."""

    secondary = True


class StepHook:
    def forward_start(self) -> None: ...
    def forward_end(self, loss: torch.Tensor) -> None: ...
    def backward_end(self) -> None: ...
    def step_end(self) -> None: ...
    def optimizer_step_end(self) -> None: ...


class StepGuard(StepHook):
    def __init__(self, device: torch.device, params: list[torch.nn.Parameter], stop, where):
        self.device, self.params, self.stop, self.where = device, params, stop, where
        self.stop_agreed = False
        self.last_good: str | None = None  # the newest checkpoint, named in the error

    def _kept(self) -> str:
        return f"; the last good checkpoint is {self.last_good}" if self.last_good else "; no checkpoint was written before it"

    def forward_end(self, loss: torch.Tensor) -> None:
        flags = self._exchange(nonfinite=not torch.isfinite(loss.detach()).all(), failed=False)
        if flags[2] > 0:
            rank = f"rank {int(flags[3])}" if flags[2] == 1 else f"{int(flags[2])} ranks"
            raise PeerFailed(f"{rank} stopped on an error at {self.where()}; training stopped{self._kept()} {SECONDARY}")
        if flags[0] > 0:
            raise NonFiniteLoss(f"loss became NaN/inf at {self.where()}; training stopped{self._kept()}")
        self.stop_agreed = self.stop_agreed or flags[1] > 0

    def fail_together(self, rank: int) -> None:
        """This rank met an error before this micro-step's exchange (a bad sample in its shards): it
        joins the exchange the other ranks wait in, so they stop with one line too, instead of dying
        later on a broken connection."""
        self._exchange(nonfinite=False, failed=True, rank=rank)

    def _exchange(self, nonfinite: bool, failed: bool, rank: int = 0) -> list[float]:
        """[ranks with a non-finite loss, ranks asked to stop, ranks failed, sum of the failed ranks]."""
        flags = torch.tensor([float(nonfinite), float(self.stop.requested), float(failed), float(rank if failed else 0)])
        return all_reduce_sum_(flags, self.device).tolist()

    def optimizer_step_end(self) -> None:
        # A finite loss can still give inf/NaN weights (huge gradients); never checkpoint those.
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all()):
            raise NonFiniteLoss(f"weights became NaN/inf in the optimizer step at {self.where()}; training stopped{self._kept()}")


class PhaseTimer(StepHook):
    """Wall time per phase. DeepSpeed all-reduces inside backward; its allreduce_gradients is wrapped to
    time that part apart."""

    PHASES = ("forward", "backward", "all_reduce", "optimizer")

    def __init__(self, engine, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.times = dict.fromkeys(self.PHASES, 0.0)
        self.t = 0.0
        inner = engine.allreduce_gradients

        def timed_allreduce(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.sync()
            self.times["all_reduce"] += time.perf_counter() - t0
            return out

        engine.allreduce_gradients = timed_allreduce

    def _lap(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.times[phase] += now - self.t
        self.t = now

    def forward_start(self) -> None:
        self.sync()
        self.t = time.perf_counter()

    def forward_end(self, loss) -> None:
        self._lap("forward")

    def backward_end(self) -> None:
        self._lap("backward")

    def step_end(self) -> None:
        self._lap("optimizer")

    def take(self, data_s: float) -> dict:
        out = {"data": data_s, **self.times}
        out["backward"] -= out["all_reduce"]  # it ran inside backward
        self.times = dict.fromkeys(self.PHASES, 0.0)
        return out
