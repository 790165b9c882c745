"""kd_loss against an independent float64 reference written here with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcli.errors import ConfigError
from kdcli.losses import kd_loss


def _log_softmax64(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reference(s, t, y, tau, alpha, smoothing=0.0):
    """Loss and d loss / d s in float64, from the textbook formulas."""
    s, t = s.astype(np.float64), t.astype(np.float64)
    n, c = s.shape
    log_ps, log_pt = _log_softmax64(s / tau), _log_softmax64(t / tau)
    pt = np.exp(log_pt)
    safe_log_pt = np.where(pt > 0, log_pt, 0.0)  # 0·log 0 = 0
    kl = (pt * (safe_log_pt - np.where(pt > 0, log_ps, 0.0))).sum(1)
    log_p1 = _log_softmax64(s)
    target = np.full((n, c), smoothing / c)
    target[np.arange(n), y] += 1 - smoothing
    ce = -(target * log_p1).sum(1)
    loss = np.mean(alpha * tau**2 * kl + (1 - alpha) * ce)
    grad = (alpha * tau * (np.exp(log_ps) - pt) + (1 - alpha) * (np.exp(log_p1) - target)) / n
    return loss, grad


@pytest.mark.parametrize("tau", [0.1, 1.0, 4.0, 100.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_matches_float64_reference(tau, alpha, classes):
    g = np.random.default_rng(classes)
    s = (3 * g.standard_normal((37, classes))).astype(np.float32)
    t = (3 * g.standard_normal((37, classes))).astype(np.float32)
    y = g.integers(0, classes, 37)
    student = torch.tensor(s, requires_grad=True)
    loss = kd_loss(student, torch.tensor(t), tau=tau, alpha=alpha, labels=torch.tensor(y), backend="eager")
    loss.backward()
    ref_loss, ref_grad = reference(s, t, y, tau, alpha)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(ref_loss, rel=2e-4, abs=1e-5)
    scale = np.abs(ref_grad).max()
    np.testing.assert_allclose(student.grad.numpy(), ref_grad, rtol=0, atol=2e-4 * scale + 1e-8)


def test_label_smoothing_in_the_ce_term():
    g = np.random.default_rng(0)
    s, t = g.standard_normal((8, 5)).astype(np.float32), g.standard_normal((8, 5)).astype(np.float32)
    y = g.integers(0, 5, 8)
    loss = kd_loss(torch.tensor(s), torch.tensor(t), tau=2.0, alpha=0.5, labels=torch.tensor(y),
                   label_smoothing=0.1)
    assert loss.item() == pytest.approx(reference(s, t, y, 2.0, 0.5, smoothing=0.1)[0], rel=1e-5)


def test_alpha_zero_is_exactly_cross_entropy():
    s, t, y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    out = kd_loss(s, t, tau=4.0, alpha=0.0, labels=y)
    # bit for bit what train-labels computes (the α = 0 pairing test relies on it) ...
    assert torch.equal(out, F.cross_entropy(s, y))
    # ... and the right number
    assert out.item() == pytest.approx(reference(s.numpy(), t.numpy(), y.numpy(), 4.0, 0.0)[0], rel=1e-6)


def test_mask_drops_rows_and_nan_does_not_leak():
    s = torch.randn(6, 7, requires_grad=True)
    t = torch.randn(6, 7)
    t[4] = float("nan")  # a padded row
    mask = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    loss = kd_loss(s, t, tau=2.0, mask=mask)
    loss.backward()
    keep = mask.numpy()
    ref_loss, ref_grad = reference(s.detach().numpy()[keep], t.numpy()[keep], np.zeros(4, int), 2.0, 1.0)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert torch.isfinite(s.grad).all()
    assert torch.all(s.grad[~mask] == 0)
    np.testing.assert_allclose(s.grad.numpy()[keep], ref_grad, atol=1e-6)


def test_fully_masked_batch_is_zero_with_a_gradient():
    s = torch.randn(3, 4, requires_grad=True)
    loss = kd_loss(s, torch.randn(3, 4), tau=1.0, mask=torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and torch.all(s.grad == 0)


def test_teacher_minus_inf_logits_contribute_nothing():
    s = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    t = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    t[:, 2] = -np.inf
    student = torch.tensor(s, requires_grad=True)
    loss = kd_loss(student, torch.tensor(t), tau=3.0)
    loss.backward()
    ref_loss, ref_grad = reference(s, t, np.zeros(4, int), 3.0, 1.0)
    assert np.isfinite(loss.item()) and loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(student.grad.numpy(), ref_grad, atol=1e-6)


def test_gradcheck_float64():
    s = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randint(0, 6, (5,))
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, tau=2.5, alpha=0.7, labels=y), (s,))


def test_leading_dimensions_are_rows():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    ref = reference(s.reshape(6, 5).numpy(), t.reshape(6, 5).numpy(), np.zeros(6, int), 2.0, 1.0)[0]
    assert kd_loss(s, t, tau=2.0).item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("kwargs, word", [({"tau": 0.0}, "tau"), ({"tau": -1.0}, "tau"),
                                          ({"tau": 1.0, "alpha": 1.5}, "alpha"),
                                          ({"tau": 1.0, "alpha": -0.1}, "alpha"),
                                          ({"tau": 1.0, "alpha": 0.5}, "labels"),
                                          ({"tau": 1.0, "backend": "nope"}, "kd-backend")])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), **kwargs)


def test_fused_small_path_matches_reference_with_minus_inf_and_scaled_grad(monkeypatch):
    """128×10 pure KD takes the fused backend's short path (losses/fused.py SMALL_ELEMENTS)."""
    from kdcli.losses import fused

    calls = []
    real = fused._small_kd
    monkeypatch.setattr(fused, "_small_kd", lambda *a: calls.append(1) or real(*a))
    g = np.random.default_rng(7)
    s = (3 * g.standard_normal((128, 10))).astype(np.float32)
    t = (3 * g.standard_normal((128, 10))).astype(np.float32)
    t[5, :4] = -np.inf
    student = torch.tensor(s, requires_grad=True)
    loss = kd_loss(student, torch.tensor(t), tau=4.0, backend="fused")
    (2.0 * loss).backward()
    ref_loss, ref_grad = reference(s, t, np.zeros(128, int), 4.0, 1.0)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(student.grad.numpy(), 2.0 * ref_grad, atol=1e-7)
    assert calls == [1]
