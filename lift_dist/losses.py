"""Long-tail losses (LIFT §5, LIFT+ §5.3). Each is built from the TRAIN class counts n_c and called
as `loss(logits, labels)`. Logits are cast to fp32 first, so the losses are safe under bf16/fp16
autocast; the class statistics are buffers, so `.to(device)` moves them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lift_dist.errors import ConfigError, DataError, choices


def _as_counts(class_counts) -> torch.Tensor:
    if isinstance(class_counts, torch.Tensor):
        c = class_counts.detach().cpu().double()
    else:
        c = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
    if c.ndim != 1 or c.numel() == 0:
        raise DataError(f"class counts must be a non-empty 1-D sequence (one count per class), got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all() or (c < 0).any():
        raise DataError("class counts must be finite and non-negative")
    if c.sum() <= 0:
        raise DataError("class counts are all zero")
    return c


class _ClassCountLoss(nn.Module):
    needs_positive_counts = True

    def __init__(self, class_counts):
        super().__init__()
        counts = _as_counts(class_counts)
        if self.needs_positive_counts and (counts == 0).any():
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise DataError(
                f"loss {type(self).__name__} needs at least one training image per class; "
                f"class(es) {empty[:10]}{' …' if len(empty) > 10 else ''} have none"
            )
        self.num_classes = counts.numel()
        self.register_buffer("counts", counts.float())
        prior = counts / counts.sum()
        self.register_buffer("prior", prior.float())
        self.register_buffer("log_prior", prior.log().float())

    def _prepare(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise DataError(
                f"{type(self).__name__}: logits must be (batch, {self.num_classes}) to match the class counts, "
                f"got {tuple(logits.shape)}"
            )
        return logits.float(), labels.long()


class CrossEntropy(_ClassCountLoss):
    needs_positive_counts = False

    def forward(self, logits, labels):
        z, y = self._prepare(logits, labels)
        return F.cross_entropy(z, y)


class LogitAdjustedLoss(_ClassCountLoss):
    """LA (the LIFT/LIFT+ default): CE(z + τ·log π). Training only; inference uses raw logits."""

    def __init__(self, class_counts, tau: float = 1.0):
        super().__init__(class_counts)
        self.tau = float(tau)

    def forward(self, logits, labels):
        z, y = self._prepare(logits, labels)
        return F.cross_entropy(z + self.tau * self.log_prior, y)


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    """Balanced softmax = LA with τ = 1. [BUG fixed] LIFT's `build_criterion` compared (`==`) instead
    of assigning for "BS", so selecting it crashed; LIFT+ fixed it the same way."""

    def __init__(self, class_counts):
        super().__init__(class_counts, tau=1.0)


class FocalLoss(_ClassCountLoss):
    """mean((1 − p_y)^γ · CE), γ = 2, no α."""

    needs_positive_counts = False

    def __init__(self, class_counts, gamma: float = 2.0):
        super().__init__(class_counts)
        self.gamma = float(gamma)

    def forward(self, logits, labels):
        z, y = self._prepare(logits, labels)
        ce = F.cross_entropy(z, y, reduction="none")
        p = torch.exp(-ce)
        return ((1.0 - p) ** self.gamma * ce).mean()


class LDAMLoss(_ClassCountLoss):
    """Target logit lowered by m_y·s, m_c ∝ n_c^(−1/4) with max 0.5, then CE. The logits already
    carry the head scale, hence the ·s. [BUG fixed] the original built the margins with
    `torch.cuda.FloatTensor` (CUDA only) and a uint8 mask; here it is a buffer on any device."""

    def __init__(self, class_counts, max_m: float = 0.5, s: float = 25.0):
        super().__init__(class_counts)
        m = self.counts.double() ** -0.25
        self.register_buffer("margins", (m * (max_m / m.max())).float())
        self.s = float(s)

    def forward(self, logits, labels):
        z, y = self._prepare(logits, labels)
        shift = F.one_hot(y, self.num_classes).to(z.dtype) * (self.margins[y] * self.s)[:, None]
        return F.cross_entropy(z - shift, y)


def _mean_one(w: torch.Tensor) -> torch.Tensor:
    return w / w.mean()


class ClassBalancedLoss(_ClassCountLoss):
    """CB: w_c = (1 − β)/(1 − β^{n_c}), normalised to mean 1 over classes; weighted CE with
    PyTorch's weighted mean (Σ w_y ℓ / Σ w_y)."""

    def __init__(self, class_counts, beta: float = 0.9999):
        super().__init__(class_counts)
        n = self.counts.double()
        self.register_buffer("class_weight", _mean_one((1.0 - beta) / (1.0 - beta**n)).float())

    def forward(self, logits, labels):
        z, y = self._prepare(logits, labels)
        return F.cross_entropy(z, y, weight=self.class_weight)


class GRWLoss(_ClassCountLoss):
    """GRW: w_c = (1/π_c)^p (p = 1), normalised to mean 1; weighted CE."""

    def __init__(self, class_counts, exp_scale: float = 1.0):
        super().__init__(class_counts)
        self.register_buffer("class_weight", _mean_one((1.0 / self.prior.double()) ** exp_scale).float())

    def forward(self, logits, labels):
        z, y = self._prepare(logits, labels)
        return F.cross_entropy(z, y, weight=self.class_weight)


class LADELoss(_ClassCountLoss):
    """CE(z + log π) + w·(−Σ_c π_c·est_c), est_c = first_c − second_c − λ·second_c² (LIFT §5)."""

    def __init__(self, class_counts, remine_lambda: float = 0.1, estim_loss_weight: float = 0.1):
        super().__init__(class_counts)
        self.remine_lambda, self.estim_loss_weight = float(remine_lambda), float(estim_loss_weight)

    def forward(self, logits, labels):
        z, y = self._prepare(logits, labels)
        B, C = z.shape
        ce = F.cross_entropy(z + self.log_prior, y)
        onehot = F.one_hot(y, C).to(z.dtype)  # (B, C)
        first = (z * onehot).sum(0) / (onehot.sum(0) + 1e-8)  # absent classes give 0
        q = z - torch.log(self.prior + 1e-9) + math.log(1.0 / C + 1e-9)
        second = torch.logsumexp(q, dim=0) - math.log(B)  # over ALL batch samples
        est = first - second - self.remine_lambda * second**2
        return ce + self.estim_loss_weight * (-(self.prior * est).sum())


LOSSES = {
    "la": LogitAdjustedLoss,
    "ce": CrossEntropy,
    "focal": FocalLoss,
    "ldam": LDAMLoss,
    "cb": ClassBalancedLoss,
    "grw": GRWLoss,
    "lade": LADELoss,
    "bs": BalancedSoftmaxLoss,
}


def build_loss(name: str, class_counts, scale: float = 25.0) -> nn.Module:
    """`scale` is the head's logit scale; only LDAM uses it (s in m_y·s)."""
    key = str(name).lower()
    if key not in LOSSES:
        raise ConfigError(f"unknown loss '{name}'; valid losses: {choices(LOSSES)}")
    if key == "ldam":
        return LDAMLoss(class_counts, s=scale)
    return LOSSES[key](class_counts)
