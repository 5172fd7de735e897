"""Classification metrics for long-tail evaluation (LIFT §7, LIFT+ §6).

Groups come from TRAIN counts (`group_of`: head > 100, medium 20–100, tail < 20). Group and mean
class accuracies average per-class accuracy over the classes present in the eval set; a group with
no such class is NaN (e.g. CIFAR-100-IR10 tail, as in LIFT+).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lift_dist.data.manifest import GROUPS, group_of
from lift_dist.errors import DataError


def cifar100_lt_counts(imbalance: float, img_max: int = 500, num_classes: int = 100) -> list[int]:
    """CIFAR-100-LT training counts: n_c = int(img_max · (1/imbalance)^(c / (C − 1))) (LIFT, LIFT+)."""
    factor = 1.0 / imbalance
    return [int(img_max * factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _as_long_1d(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if (t.is_floating_point() or t.is_complex()) and t.numel():  # an empty list reads as float
        raise DataError(f"{what} must be integer class indices, got dtype {t.dtype}")
    return t.detach().cpu().long().flatten()


class MetricAccumulator:
    """Per-class correct/total counts (int64, CPU): a distributed reduction is a SUM of two tensors."""

    def __init__(self, num_classes: int):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.correct = torch.zeros(num_classes, dtype=torch.int64)
        self.total = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, preds, labels) -> None:
        preds, labels = _as_long_1d(preds, "predictions"), _as_long_1d(labels, "labels")
        if preds.numel() != labels.numel():
            raise DataError(f"{preds.numel()} predictions for {labels.numel()} labels")
        if labels.numel() == 0:
            return
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise DataError(
                f"eval labels must lie in 0..{self.num_classes - 1}, found {int(labels.min())}..{int(labels.max())}"
            )
        self.total += torch.bincount(labels, minlength=self.num_classes)
        self.correct += torch.bincount(labels[preds == labels], minlength=self.num_classes)

    def compute(self, train_counts) -> dict:
        counts = np.asarray(train_counts.cpu() if isinstance(train_counts, torch.Tensor) else train_counts)
        if counts.ndim != 1 or counts.shape[0] != self.num_classes:
            raise DataError(f"train_counts must have one entry per class ({self.num_classes}), got shape {counts.shape}")
        correct, total = self.correct.numpy(), self.total.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
        groups = np.array([group_of(int(c)) for c in counts])
        n = int(total.sum())
        out = {
            "overall": float(correct.sum() / n) if n else math.nan,  # micro accuracy
            "mean_class": _nanmean(per_class),
            **{g: _nanmean(per_class[groups == g]) for g in GROUPS},
            "num_samples": n,
            "group_classes": {g: int(((groups == g) & (total > 0)).sum()) for g in GROUPS},
            "per_class": per_class,
            "per_class_count": total.copy(),
            "per_class_correct": correct.copy(),
        }
        return out


def classification_metrics(preds, labels, train_counts) -> dict:
    """overall (micro), mean_class, head/medium/tail (NaN when a group has no eval class), per_class
    (NaN where a class has no eval sample), per_class_count, per_class_correct."""
    counts = np.asarray(train_counts.cpu() if isinstance(train_counts, torch.Tensor) else train_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise DataError(f"train_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    acc = MetricAccumulator(int(counts.shape[0]))
    acc.update(preds, labels)
    return acc.compute(counts)
