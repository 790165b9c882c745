"""The fused CPU backend: loss and gradient in one sweep over the logits.

Per row, with z = (x − max x)/τ for student x = s and teacher x = t,
S = Σ exp(z), p = exp(z)/S, and z¹, S¹, p¹ the same at τ = 1 for the CE term:

    τ²·KL   = τ²·(Σ_{p_t>0} p_t·(z_t − z_s) + log(1 + Σ(e^z_s − e^z_t)/S_t))
    CE      = log S¹ − (1−ε)·z¹_y − (ε/V)·Σ z¹
    d/ds    = α·τ·(p_s − p_t) + (1−α)·(p¹ − (1−ε)·onehot(y) − ε/V)

all in float32 (float64 for float64 input), times the row weight 1/n_kept
(0 for masked rows). The gradient is written in the forward pass; backward only
rescales it (losses/precomputed.py). Nothing [N, V] is allocated but the gradient.

Large calls run `_rows_and_grad` through torch.compile: Inductor's C++ backend
turns it into one loop over rows, each reading its row a few times from cache,
vectorised, with no temporaries. Compiling costs seconds once per process
(measured 7 s with a warm Inductor cache, 17 s cold, on 2 cores), so calls under
COMPILE_MIN_ELEMENTS logits, where that would take thousands of steps to repay,
run the same function eagerly over blocks of rows instead, as does everything
when no compiler is found.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sysconfig
import warnings

import torch

from kdcli.losses.precomputed import attach_grad

# Smallest N·V worth compiling for (benchmarks/kd_loss.py): from here on a call
# saves ≥ 5 ms over the uncompiled path, repaying the compile within ~1000 steps;
# a 128×10 call would save microseconds.
COMPILE_MIN_ELEMENTS = 1 << 18
# Rows per block in eager mode: about 2^16 logits, so its temporaries stay small.
EAGER_BLOCK_ELEMENTS = 1 << 16
# Up to here (a classification batch, e.g. 128×10), pure distillation takes a
# short path of five whole-tensor ops: at this size the per-op overhead is the
# cost, and the general path's extra bookkeeping nearly doubled it (170 vs 300 µs
# forward+backward at 128×10, one thread).
SMALL_ELEMENTS = 1 << 14


def _small_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """τ²·KL mean over rows and its gradient τ·(p_s − p_t)/N, for small unmasked calls."""
    dtype = torch.promote_types(student.dtype, torch.float32)
    n = student.shape[0]
    with torch.no_grad():
        log_ps = torch.log_softmax(student.detach().to(dtype) / tau, dim=1)
        log_pt = torch.log_softmax(teacher.detach().to(dtype) / tau, dim=1)
        pt = log_pt.exp()
        # p_t = 0 (teacher −inf) contributes 0, not 0·(−inf) = NaN.
        loss = torch.where(pt > 0, pt * (log_pt - log_ps), 0).sum() * (tau * tau / n)
        grad = ((log_ps.exp() - pt) * (tau / n)).to(student.dtype)
    return attach_grad(student, loss, grad)


def _rows_and_grad(s, t, labels, weight, tau: float, alpha: float, eps: float,
                   with_kd: bool, with_ce: bool):
    """Per-row pieces of the loss, and the weighted gradient, for a block of rows.

    Returns (Σ p_t·(z_t − z_s), Σ(e^z_s − e^z_t), S_t) if with_kd, then
    (S¹, z¹_y, Σ z¹) if with_ce, then the gradient; `_finish_rows` makes row
    losses of the pieces. Their logs are taken there, outside: an [N]-sized op
    in here would stop Inductor from fusing everything into one loop over rows.
    """
    dtype = torch.promote_types(s.dtype, torch.float32)
    x = s.to(dtype)
    keep = weight[:, None] > 0
    mx = x.amax(1, keepdim=True)
    grad = torch.zeros((), dtype=dtype, device=s.device)
    pieces = []
    if with_kd:
        y = t.to(dtype)
        my = y.amax(1, keepdim=True)
        zs, zt = (x - mx) / tau, (y - my) / tau
        es, et = zs.exp(), zt.exp()
        ss, st = es.sum(1, keepdim=True), et.sum(1, keepdim=True)
        pt = et / st
        # p_t = 0 (teacher −inf) contributes 0, not 0·(−inf − z_s) = NaN.
        kl_part = torch.where(et > 0, pt * (zt - zs), 0).sum(1)
        # S_s − S_t summed term by term: at large τ both sums are ≈ V and their
        # difference is tiny, so it must not come from subtracting them.
        gap = (es - et).sum(1)
        grad = grad + (alpha * tau) * (es / ss - pt)
        pieces += [kl_part, gap, st.squeeze(1)]
    if with_ce:
        z1 = x - mx
        s1 = z1.exp().sum(1, keepdim=True)
        cols = torch.arange(s.shape[1], device=s.device)
        target = (1 - eps) * (cols[None, :] == labels[:, None]).to(dtype) + eps / s.shape[1]
        grad = grad + (1 - alpha) * (z1.exp() / s1 - target)
        z1_y = x.gather(1, labels[:, None]).squeeze(1) - mx.squeeze(1)
        # ε = 0 must not touch Σ z¹: a student −inf would make it 0·(−inf) = NaN.
        z1_sum = z1.sum(1) if eps > 0 else torch.zeros_like(z1_y)
        pieces += [s1.squeeze(1), z1_y, z1_sum]
    grad = torch.where(keep, grad * weight[:, None], 0).to(s.dtype)
    return (*pieces, grad)


def _finish_rows(pieces, tau, alpha, eps, vocab, with_kd, with_ce):
    """Row losses from `_rows_and_grad`'s pieces (cheap [N]-sized arithmetic)."""
    rows = 0
    if with_kd:
        kl_part, gap, st = pieces[:3]
        rows = rows + alpha * tau * tau * (kl_part + torch.log1p(gap / st))  # + log(S_s/S_t)
        pieces = pieces[3:]
    if with_ce:
        s1, z1_y, z1_sum = pieces
        ce = s1.log() - (1 - eps) * z1_y
        if eps > 0:
            ce = ce - (eps / vocab) * z1_sum
        rows = rows + (1 - alpha) * ce
    return rows


@functools.cache
def compile_available() -> bool:
    """Whether torch.compile should be able to build C++ kernels here.

    A cheap look for a C++ compiler and the Python headers, so that choosing a
    backend imports nothing heavy; whatever else can go wrong is caught on the
    first compile (`_run_compiled`).
    """
    include = sysconfig.get_paths().get("include", "")
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return os.path.exists(os.path.join(include, "Python.h")) and any(
        c and shutil.which(c) for c in compilers)


@functools.cache
def _compiled():
    # On a CPU-only machine with a CUDA build of torch, Inductor's C++ build logs "No CUDA
    # runtime is found" on first use: true and harmless here, and noise in a run's output.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(_rows_and_grad, dynamic=True)


_compile_failed = False


def _run_compiled(*args):
    """The compiled kernel, or None (with one warning) if this machine cannot build it."""
    global _compile_failed
    if _compile_failed or not compile_available():
        return None
    try:
        return _compiled()(*args)
    except Exception as exc:  # a compiler that fails on Inductor's code, a sandboxed tmp...
        _compile_failed = True
        warnings.warn(f"kd backend 'fused': torch.compile failed ({type(exc).__name__}: {exc}); "
                      "running the same maths uncompiled", RuntimeWarning, stacklevel=3)
        return None


def _run_blocks(s, t, labels, weight, *flags):
    """`_rows_and_grad` eagerly over blocks of rows; the gradient is the only [N, V] tensor."""
    n, vocab = s.shape
    step = max(1, EAGER_BLOCK_ELEMENTS // max(vocab, 1))
    grad = torch.empty_like(s)
    parts = []
    for i in range(0, n, step):
        *pieces, grad[i:i + step] = _rows_and_grad(s[i:i + step], t[i:i + step], labels[i:i + step],
                                                   weight[i:i + step], *flags)
        parts.append(pieces)
    return (*(torch.cat(p) for p in zip(*parts)), grad)


def fused_loss(student: torch.Tensor, teacher: torch.Tensor, *, tau: float, alpha: float,
               labels: torch.Tensor | None, mask: torch.Tensor | None,
               label_smoothing: float, compiled: bool | None = None) -> torch.Tensor:
    """Mean KD loss over the kept rows of [N, V] logits, with its gradient attached.

    compiled: force (True) or skip (False) torch.compile; None decides by size.
    """
    n, vocab = student.shape
    if alpha == 1 and mask is None and not compiled and 0 < n * vocab <= SMALL_ELEMENTS:
        return _small_kd(student, teacher, tau)
    device, dtype = student.device, torch.promote_types(student.dtype, torch.float32)
    with_kd, with_ce = alpha > 0, alpha < 1
    keep = torch.ones(n, dtype=torch.bool, device=device) if mask is None else mask.to(torch.bool)
    weight = keep.to(dtype) / keep.sum().clamp(min=1)  # 1/n_kept, 0 if masked; no host sync
    labels = torch.zeros(n, dtype=torch.long, device=device) if labels is None else labels
    labels = torch.where(keep, labels, 0)  # a masked row may carry an ignore index like −100
    args = (student.detach(), teacher.detach(), labels, weight, tau, alpha, label_smoothing,
            with_kd, with_ce)
    if compiled is None:
        compiled = n * vocab >= COMPILE_MIN_ELEMENTS
    with torch.no_grad():
        out = _run_compiled(*args) if compiled else None
        if out is None:
            out = _run_blocks(*args)
        *pieces, grad = out
        rows = _finish_rows(pieces, tau, alpha, label_smoothing, vocab, with_kd, with_ce)
        loss = torch.where(keep, rows * weight, 0).sum()
    return attach_grad(student, loss, grad)
