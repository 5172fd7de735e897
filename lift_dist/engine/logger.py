"""One logger for a run: lines to stdout + RUN/log.txt, scalars to TensorBoard and, when asked for and
installed, Weights & Biases. Only rank 0 writes; on other ranks every call does nothing."""

from __future__ import annotations

import sys

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lift_dist.run_dir import RunDir


class MetricsLogger:
    def __init__(self, run: RunDir, active: bool, wandb_project: str | None = None, config: dict | None = None):
        self.run, self.active = run, active
        self.tensorboard = self.wandb = None
        if not active:
            return
        self.tensorboard = SummaryWriter(str(run.tensorboard_dir))
        if wandb_project:
            import wandb  # noqa: PLC0415  (optional dependency, checked at preflight)

            self.wandb = wandb.init(project=wandb_project, dir=str(run.path), config=config, name=run.path.name,
                                    resume="allow")

    def info(self, msg: str) -> None:
        if self.active:
            print(msg, flush=True)
            self.run.log(msg)

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        """Log numbers (None -> NaN) under `prefix/`; nested dicts are flattened with '/'."""
        if not self.active:
            return
        flat = _flatten(values, prefix)
        for k, v in flat.items():
            self.tensorboard.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(flat, step=step)

    def progress_bar(self, total: int, initial: int, desc: str):
        if not self.active:
            return None
        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                    mininterval=0.5 if sys.stderr.isatty() else 30)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _flatten(values: dict, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        elif isinstance(v, (int, float)) or v is None:
            out[key] = float("nan") if v is None else float(v)
    return out
