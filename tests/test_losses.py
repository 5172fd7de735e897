import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lift_dist.errors import ConfigError, DataError
from lift_dist.losses import (
    LOSSES,
    BalancedSoftmaxLoss,
    ClassBalancedLoss,
    FocalLoss,
    GRWLoss,
    LADELoss,
    LDAMLoss,
    LogitAdjustedLoss,
    build_loss,
)

COUNTS = [500, 120, 40, 7, 2]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, generator=g) * 10
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 4, 0, 1, 2])
    return z, y


def test_registry_and_unknown_name():
    assert set(LOSSES) == {"la", "ce", "focal", "ldam", "cb", "grw", "lade", "bs"}
    for name in LOSSES:
        assert isinstance(build_loss(name, COUNTS), LOSSES[name])
    assert build_loss("LA", COUNTS).tau == 1.0
    with pytest.raises(ConfigError, match="bs, cb, ce, focal, grw, la, lade, ldam"):
        build_loss("ride", COUNTS)


def test_la_is_ce_on_logits_shifted_by_log_prior(batch):
    z, y = batch
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    expected = F.cross_entropy(z.double() + prior.log(), y)
    assert torch.allclose(build_loss("la", COUNTS)(z, y).double(), expected, atol=1e-5)
    # hand value: zero logits → loss = mean(−log π_y)
    la = LogitAdjustedLoss([3, 1])
    assert math.isclose(la(torch.zeros(2, 2), torch.tensor([0, 1])).item(), (-math.log(0.75) - math.log(0.25)) / 2, rel_tol=1e-6)
    assert not torch.allclose(build_loss("ce", COUNTS)(z, y), build_loss("la", COUNTS)(z, y))
    tau2 = LogitAdjustedLoss(COUNTS, tau=2.0)
    assert torch.allclose(tau2(z, y).double(), F.cross_entropy(z.double() + 2 * prior.log(), y), atol=1e-5)


def test_bs_equals_la(batch):
    z, y = batch
    assert torch.equal(BalancedSoftmaxLoss(COUNTS)(z, y), LogitAdjustedLoss(COUNTS)(z, y))


def test_focal():
    # two classes, zero logits: p = 1/2, CE = log 2 → (1/2)² · log 2
    f = FocalLoss([1, 1])
    assert math.isclose(f(torch.zeros(3, 2), torch.tensor([0, 1, 1])).item(), 0.25 * math.log(2), rel_tol=1e-6)
    z, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    p = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    assert math.isclose(FocalLoss([1, 1, 1])(z, y).item(), (1 - p) ** 2 * -math.log(p), rel_tol=1e-5)


def test_ldam_margins_and_value():
    ldam = LDAMLoss([16, 1], s=25.0)
    # n^-1/4 = (0.5, 1) → scaled to max 0.5 → (0.25, 0.5)
    assert torch.allclose(ldam.margins, torch.tensor([0.25, 0.5]))
    z = torch.zeros(2, 2)
    # y=1: target logit 0 − 0.5·25 = −12.5 → loss log(1 + e^12.5); y=0: −6.25 → log(1 + e^6.25)
    expected = (math.log1p(math.exp(12.5)) + math.log1p(math.exp(6.25))) / 2
    assert math.isclose(ldam(z, torch.tensor([1, 0])).item(), expected, rel_tol=1e-6)
    assert build_loss("ldam", [16, 1], scale=10.0).s == 10.0
    assert "margins" in dict(ldam.named_buffers())  # moves with .to(device)


def test_cb_weights_and_weighted_mean(batch):
    cb = ClassBalancedLoss([1, 2], beta=0.5)
    # (1−β)/(1−β^n) = (1, 2/3), mean 5/6 → (1.2, 0.8)
    assert torch.allclose(cb.class_weight, torch.tensor([1.2, 0.8]))
    z, y = batch
    beta = 0.9999
    n = np.array(COUNTS, dtype=np.float64)
    w = (1 - beta) / (1 - beta**n)
    w = w / w.mean()
    ce = F.cross_entropy(z.double(), y, reduction="none").numpy()
    expected = (w[y.numpy()] * ce).sum() / w[y.numpy()].sum()
    assert math.isclose(build_loss("cb", COUNTS)(z, y).item(), expected, rel_tol=1e-5)


def test_grw(batch):
    grw = GRWLoss([3, 1])
    # 1/π = (4/3, 4), mean 8/3 → (0.5, 1.5)
    assert torch.allclose(grw.class_weight, torch.tensor([0.5, 1.5]))
    z, y = batch
    w = 1 / (np.array(COUNTS) / sum(COUNTS))
    w = w / w.mean()
    ce = F.cross_entropy(z.double(), y, reduction="none").numpy()
    expected = (w[y.numpy()] * ce).sum() / w[y.numpy()].sum()
    assert math.isclose(build_loss("grw", COUNTS)(z, y).item(), expected, rel_tol=1e-5)


def test_lade_against_loop_recomputation(batch):
    z, y = batch
    z, y = z[:7], y[:7]  # class 4 absent from this batch: its first term is 0
    zd = z.double().tolist()
    B, C = len(zd), len(COUNTS)
    pi = [n / sum(COUNTS) for n in COUNTS]
    ce = sum(-(zd[i][y[i]] + math.log(pi[y[i]])) + math.log(sum(math.exp(zd[i][c] + math.log(pi[c])) for c in range(C)))
             for i in range(B)) / B
    reg = 0.0
    for c in range(C):
        members = [zd[i][c] for i in range(B) if y[i] == c]
        first = sum(members) / (len(members) + 1e-8)
        second = math.log(sum(math.exp(zd[i][c] - math.log(pi[c] + 1e-9) + math.log(1 / C + 1e-9)) for i in range(B))) - math.log(B)
        reg += pi[c] * (first - second - 0.1 * second**2)
    expected = ce + 0.1 * (-reg)
    got = LADELoss(COUNTS)(z, y).item()
    assert math.isclose(got, expected, rel_tol=1e-5)
    assert not math.isclose(got, LogitAdjustedLoss(COUNTS)(z, y).item(), rel_tol=1e-3)


def test_fp32_compute_buffers_and_grad(batch):
    z, y = batch
    for name in LOSSES:
        loss_fn = build_loss(name, torch.tensor(COUNTS))
        out = loss_fn(z.bfloat16(), y)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        ref = loss_fn(z.bfloat16().float(), y)
        assert torch.equal(out, ref)
        assert all(b.device.type == "cpu" for b in loss_fn.to("cpu").buffers())
        zz = z.clone().requires_grad_(True)
        loss_fn(zz, y).backward()
        assert torch.isfinite(zz.grad).all()


def test_bad_inputs():
    with pytest.raises(DataError, match=r"\[1\]"):
        build_loss("la", [10, 0, 3])
    build_loss("ce", [10, 0, 3])  # CE does not use the counts
    with pytest.raises(DataError, match="non-negative"):
        build_loss("la", [10, -1])
    with pytest.raises(DataError, match="1-D"):
        build_loss("la", [[1, 2]])
    with pytest.raises(DataError, match=r"\(batch, 5\)"):
        build_loss("la", COUNTS)(torch.zeros(2, 4), torch.tensor([0, 1]))
