"""Distillation from stored top-k rows (losses/topk.py) against independent float64 formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcli.losses import kd_loss
from kdcli.losses.topk import TopK, topk_kd_loss


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _rows(r=12, v=40, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = 3 * torch.randn(r, v, generator=g, dtype=torch.float64)
    t = 3 * torch.randn(r, v, generator=g, dtype=torch.float64)
    values, ids = t.topk(k, dim=1)
    top = TopK(values.float(), ids, torch.logsumexp(t, 1).float(), v)
    return s, t, top


def _teacher_reference(t: np.ndarray, ids: np.ndarray, tau: float):
    """The teacher at τ as the files define it: the top-k logits kept, each of the V − K tail
    classes given the logit lse + log(tail mass / (V − K)); returns q [R, V] (float64)."""
    r, v = t.shape
    k = ids.shape[1]
    lse = np.log(np.exp(t).sum(1))
    rows = np.arange(r)[:, None]
    tail_mass = 1 - np.exp(t[rows, ids] - lse[:, None]).sum(1)
    full = np.repeat((lse + np.log(tail_mass / (v - k)))[:, None], v, 1)
    full[rows, ids] = t[rows, ids]
    return np.exp(_log_softmax(full / tau))


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_uniform_tail_is_the_kl_to_the_filled_in_teacher(tau):
    s, t, top = _rows()
    q = _teacher_reference(t.numpy(), top.ids.numpy(), tau)
    log_p = _log_softmax(s.numpy() / tau)
    expected = tau ** 2 * (q * (np.log(q) - log_p)).sum(1).mean()
    got = topk_kd_loss(s.float(), top, tau=tau, tail="uniform")
    assert got.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_bucket_tail_is_the_k_plus_one_bucket_kl(tau):
    s, t, top = _rows()
    q = _teacher_reference(t.numpy(), top.ids.numpy(), tau)
    p = np.exp(_log_softmax(s.numpy() / tau))
    rows = np.arange(len(q))[:, None]
    ids = top.ids.numpy()
    q_top, p_top = q[rows, ids], p[rows, ids]
    q_rest, p_rest = 1 - q_top.sum(1), 1 - p_top.sum(1)
    kl = (q_top * np.log(q_top / p_top)).sum(1) + q_rest * np.log(q_rest / p_rest)
    got = topk_kd_loss(s.float(), top, tau=tau, tail="bucket")
    assert got.item() == pytest.approx(tau ** 2 * kl.mean(), rel=1e-4)


def test_bucket_never_exceeds_uniform():
    """Lumping the tail into one bucket can only lose information (log-sum inequality)."""
    s, _, top = _rows(seed=3)
    for tau in (1.0, 4.0):
        assert topk_kd_loss(s.float(), top, tau=tau, tail="bucket") <= \
            topk_kd_loss(s.float(), top, tau=tau, tail="uniform") + 1e-6


@pytest.mark.parametrize("tail", ["uniform", "bucket"])
def test_k_equal_v_is_the_full_kd_loss_with_labels_and_mask(tail):
    s, t, _ = _rows(v=9, k=9)
    values, ids = t.topk(9, dim=1)
    top = TopK(values.float(), ids, torch.logsumexp(t, 1).float(), 9)
    labels = torch.randint(0, 9, (12,), generator=torch.Generator().manual_seed(1))
    mask = torch.arange(12) % 3 != 0
    got = topk_kd_loss(s.float(), top, tau=2.0, alpha=0.6, labels=labels, mask=mask, tail=tail,
                       label_smoothing=0.1)
    expected = kd_loss(s.float(), t.float(), tau=2.0, alpha=0.6, labels=labels, mask=mask,
                       backend="eager", label_smoothing=0.1)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_matches_the_dense_path():
    """Uniform tail: the same gradient as kd_loss on the densified teacher rows."""
    from kdcli.io.logits import dense_logits

    s, _, top = _rows(v=30, k=4, seed=2)
    a = s.float().clone().requires_grad_(True)
    b = s.float().clone().requires_grad_(True)
    topk_kd_loss(a, top, tau=2.0, tail="uniform").backward()
    dense = dense_logits(top.values, top.ids, top.lse, 30)
    kd_loss(b, dense, tau=2.0, backend="eager").backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def test_no_kept_row_gives_zero():
    s, _, top = _rows()
    got = topk_kd_loss(s.float(), top, tau=1.0, mask=torch.zeros(12, dtype=torch.bool))
    assert got.item() == 0.0


def test_kd_loss_on_stored_token_rows_matches_float64_per_position():
    """KDLoss with a top-k file of windows: each position's stored row meets that position's
    student logits and target (the [B, T, K] → rows flattening)."""
    from kdcli.io.logits import TeacherLogits
    from kdcli.losses.objective import KDLoss
    from kdcli.task import Task
    from kdcli.teacher import StoredRows

    g = torch.Generator().manual_seed(5)
    n, t_len, v, k = 4, 3, 11, 3
    teacher = 2 * torch.randn(n, t_len, v, generator=g, dtype=torch.float64)
    values, ids = teacher.topk(k, dim=-1)
    stored = TeacherLogits(np.arange(n), v, topk_values=values.float(), topk_ids=ids.int(),
                           lse=torch.logsumexp(teacher, -1).float())
    rows = StoredRows(stored, torch.tensor([2, 0, 3, 1]), torch.device("cpu"))  # split order ≠ file order
    task = Task("sequence", v, "permutation", primary="test_loss", pi="relative_reduction")
    s = torch.randn(2, t_len, v, generator=g, dtype=torch.float64)
    y = torch.randint(0, v, (2, t_len), generator=g)
    positions = torch.tensor([1, 3])  # split positions → file rows 0 and 1
    got = KDLoss(task, 2.0, 0.5, "topk", rows)(s.float(), None, y, positions)

    file_rows = [0, 1]
    expected = []
    for b in range(2):
        q = _teacher_reference(teacher[file_rows[b]].numpy(), ids[file_rows[b]].numpy(), 2.0)
        log_p = _log_softmax(s[b].numpy() / 2.0)
        kl = 4.0 * (q * (np.log(q) - log_p)).sum(1)
        ce = -_log_softmax(s[b].numpy())[np.arange(t_len), y[b].numpy()]
        expected.append(0.5 * kl + 0.5 * ce)
    assert got.item() == pytest.approx(np.concatenate(expected).mean(), rel=1e-4)
