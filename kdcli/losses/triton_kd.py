"""The fused KD loss as a Triton kernel: the CUDA backend.

Same maths as losses/fused.py, one program per row (or per piece of a row):

1. one online pass over the row for the maxima m and normalisers
   l = Σ exp((x − m)/τ) of student and teacher (and of the student at τ = 1
   when there is a CE term), rescaling l whenever the running maximum moves;
2. one pass that forms log p_s, log p_t per element, accumulates the row loss
   and writes the gradient α·τ·(p_s − p_t) + (1−α)·(p¹ − target), times the
   row weight 1/n_kept, in the logits' dtype.

Pass 2 re-reads, backwards, the row the same program just read, so much of it
comes from L2 and the traffic nears the minimum: read s, read t, write ds.
Arithmetic is in float32 (float64 for float64 logits; τ, α, ε are float32
arguments) whatever the storage dtype; every load is cast explicitly, which
also keeps the CPU interpreter (TRITON_INTERPRET=1, no bfloat16 arithmetic)
working. Row losses are reduced in the kernel: only [N] (or [N, pieces]) floats
come back.

When N is small the rows alone cannot fill the GPU, so the vocabulary is cut
into `pieces` per row: a first kernel writes each piece's (m, l), and the
second merges a row's pieces before its pass 2 over its own piece.

This module imports triton; kdcli.losses imports it only when the triton
backend is used.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kdcli.losses.precomputed import attach_grad

MAX_BLOCK = 4096  # elements per loop step and program: 16 KiB of float32 per tensor
N_STATS = 5  # per row piece: m_s, l_s, l_1, m_t, l_t


@triton.jit
def _rescale(norm, m_old, m_new, inv_tau):
    # norm·exp((m_old − m_new)/τ), with m = −inf (nothing seen yet) giving 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return norm * tl.exp((m_old - m_safe) * inv_tau), m_safe


@triton.jit
def _online_stats(s_row, t_row, lo, hi, inv_tau, WITH_KD: tl.constexpr, WITH_CE: tl.constexpr,
                  ACC: tl.constexpr, BLOCK: tl.constexpr):
    """(m_s, l_s, l_1, m_t, l_t) of the logits in [lo, hi) of one row, in one pass."""
    m_s = tl.full((), float("-inf"), ACC)
    m_t = tl.full((), float("-inf"), ACC)
    l_s = tl.zeros((), ACC)
    l_1 = tl.zeros((), ACC)
    l_t = tl.zeros((), ACC)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < hi
        s = tl.load(s_row + offs, mask=inside, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m_s, tl.max(s, 0))
        if WITH_KD:
            l_s, m_safe = _rescale(l_s, m_s, m_new, inv_tau)
            l_s += tl.sum(tl.exp((s - m_safe) * inv_tau), 0)
        if WITH_CE:
            l_1, m_safe = _rescale(l_1, m_s, m_new, 1.0)
            l_1 += tl.sum(tl.exp(s - m_safe), 0)
        m_s = m_new
        if WITH_KD:
            t = tl.load(t_row + offs, mask=inside, other=float("-inf")).to(ACC)
            m_new = tl.maximum(m_t, tl.max(t, 0))
            l_t, m_safe = _rescale(l_t, m_t, m_new, inv_tau)
            l_t += tl.sum(tl.exp((t - m_safe) * inv_tau), 0)
            m_t = m_new
    return m_s, l_s, l_1, m_t, l_t


@triton.jit
def _loss_and_grad(s_row, t_row, g_row, lo, hi, vocab, m_s, l_s, l_1, m_t, l_t, label, weight,
                   tau, alpha, eps, WITH_KD: tl.constexpr, WITH_CE: tl.constexpr,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 2 over [lo, hi): writes the weighted gradient, returns the weighted row loss."""
    inv_tau = 1.0 / tau
    if WITH_KD:
        log_ls, log_lt = tl.log(l_s), tl.log(l_t)
        # log p_t − log p_s = (t − s + m_s − m_t)/τ − log(l_t/l_s): the log of a ratio
        # loses nothing when l_t ≈ l_s (large τ), unlike a difference of two logs.
        shift, log_ratio = m_s - m_t, tl.log(l_t / l_s)
    if WITH_CE:
        log_l1 = tl.log(l_1)
    acc = tl.zeros((BLOCK,), ACC)
    last = lo + (hi - lo - 1) // BLOCK * BLOCK
    for back in range(0, hi - lo, BLOCK):
        # Backwards: the blocks pass 1 read last are the likeliest still in L2.
        offs = last - back + tl.arange(0, BLOCK)
        inside = offs < hi
        # Lanes past the row end read 0, a finite value, and are zeroed below.
        s = tl.load(s_row + offs, mask=inside, other=0.0).to(ACC)
        grad = tl.zeros((BLOCK,), ACC)
        if WITH_KD:
            t = tl.load(t_row + offs, mask=inside, other=0.0).to(ACC)
            p_t = tl.where(inside, tl.exp((t - m_t) * inv_tau - log_lt), 0.0)
            log_ratio_ts = (t - s + shift) * inv_tau - log_ratio
            # p_t = 0 (a teacher −inf) contributes 0, not 0·(−inf) = NaN.
            acc += tl.where(p_t > 0, p_t * log_ratio_ts, 0.0) * (alpha * tau * tau)
            grad += (tl.exp((s - m_s) * inv_tau - log_ls) - p_t) * (alpha * tau)
        if WITH_CE:
            log_p1 = (s - m_s) - log_l1
            target = tl.where(offs == label, 1.0 - eps, 0.0) + eps / vocab
            target = tl.where(inside, target, 0.0)
            acc += tl.where(target > 0, -target * log_p1, 0.0) * (1.0 - alpha)
            grad += (tl.exp(log_p1) - target) * (1.0 - alpha)
        tl.store(g_row + offs, (grad * weight).to(g_row.dtype.element_ty), mask=inside)
    return tl.sum(acc, 0) * weight


@triton.jit
def _zero_grad(g_row, lo, hi, BLOCK: tl.constexpr):
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(g_row + offs, tl.zeros((BLOCK,), g_row.dtype.element_ty), mask=offs < hi)


@triton.jit
def _kd_row_kernel(s_ptr, t_ptr, g_ptr, y_ptr, w_ptr, loss_ptr, vocab, tau, alpha, eps,
                   stride_s, stride_t, stride_g, WITH_KD: tl.constexpr, WITH_CE: tl.constexpr,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row: both passes over the whole row."""
    row = tl.program_id(0).to(tl.int64)
    s_row, t_row, g_row = s_ptr + row * stride_s, t_ptr + row * stride_t, g_ptr + row * stride_g
    weight = tl.load(w_ptr + row)
    loss = tl.zeros((), ACC)
    if weight > 0:
        m_s, l_s, l_1, m_t, l_t = _online_stats(s_row, t_row, 0, vocab, 1.0 / tau,
                                                WITH_KD, WITH_CE, ACC, BLOCK)
        loss = _loss_and_grad(s_row, t_row, g_row, 0, vocab, vocab, m_s, l_s, l_1, m_t, l_t,
                              tl.load(y_ptr + row), weight, tau, alpha, eps,
                              WITH_KD, WITH_CE, ACC, BLOCK)
    else:  # a masked row: zero gradient, nothing read (it may hold NaN or −inf)
        _zero_grad(g_row, 0, vocab, BLOCK)
    tl.store(loss_ptr + row, loss)


@triton.jit
def _kd_piece_stats_kernel(s_ptr, t_ptr, w_ptr, stats_ptr, vocab, tau, piece, n_pieces,
                           stride_s, stride_t, WITH_KD: tl.constexpr, WITH_CE: tl.constexpr,
                           ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Split rows, kernel 1: (m, l) of each piece of each kept row."""
    row, part = tl.program_id(0).to(tl.int64), tl.program_id(1)
    lo = part * piece
    hi = tl.minimum(lo + piece, vocab)
    if tl.load(w_ptr + row) > 0:
        stats = _online_stats(s_ptr + row * stride_s, t_ptr + row * stride_t, lo, hi,
                              1.0 / tau, WITH_KD, WITH_CE, ACC, BLOCK)
        m_s, l_s, l_1, m_t, l_t = stats
        out = stats_ptr + (row * n_pieces + part) * 5
        tl.store(out, m_s)
        tl.store(out + 1, l_s)
        tl.store(out + 2, l_1)
        tl.store(out + 3, m_t)
        tl.store(out + 4, l_t)


@triton.jit
def _merge(m, norm, inv_tau):
    # (M, Σ_j l_j·exp((m_j − M)/τ)) over a row's pieces (m_j, l_j), M = max_j m_j.
    m_all = tl.max(m, 0)
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    return m_all, tl.sum(norm * tl.exp((m - m_safe) * inv_tau), 0)


@triton.jit
def _kd_piece_grad_kernel(s_ptr, t_ptr, g_ptr, y_ptr, w_ptr, stats_ptr, loss_ptr, vocab, tau,
                          alpha, eps, piece, n_pieces, stride_s, stride_t, stride_g,
                          WITH_KD: tl.constexpr, WITH_CE: tl.constexpr, ACC: tl.constexpr,
                          BLOCK: tl.constexpr, PIECES: tl.constexpr):
    """Split rows, kernel 2: merge the row's pieces, then pass 2 over this piece."""
    row, part = tl.program_id(0).to(tl.int64), tl.program_id(1)
    lo = part * piece
    hi = tl.minimum(lo + piece, vocab)
    g_row = g_ptr + row * stride_g
    weight = tl.load(w_ptr + row)
    loss = tl.zeros((), ACC)
    if weight > 0:
        parts = tl.arange(0, PIECES)
        valid = parts < n_pieces
        at = stats_ptr + (row * n_pieces + parts) * 5
        m_s, l_s = _merge(tl.load(at, mask=valid, other=float("-inf")),
                          tl.load(at + 1, mask=valid, other=0.0), 1.0 / tau)
        _, l_1 = _merge(tl.load(at, mask=valid, other=float("-inf")),
                        tl.load(at + 2, mask=valid, other=0.0), 1.0)
        m_t, l_t = _merge(tl.load(at + 3, mask=valid, other=float("-inf")),
                          tl.load(at + 4, mask=valid, other=0.0), 1.0 / tau)
        loss = _loss_and_grad(s_ptr + row * stride_s, t_ptr + row * stride_t, g_row, lo, hi,
                              vocab, m_s, l_s, l_1, m_t, l_t, tl.load(y_ptr + row), weight,
                              tau, alpha, eps, WITH_KD, WITH_CE, ACC, BLOCK)
    else:
        _zero_grad(g_row, lo, hi, BLOCK)
    tl.store(loss_ptr + row * n_pieces + part, loss)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """SMs on the device (a nominal 4 in the CPU interpreter)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(n: int, vocab: int, device: torch.device, block: int | None = None,
         pieces: int | None = None) -> tuple[int, int, int]:
    """(BLOCK, piece length, pieces per row): whole rows unless there are fewer rows than SMs.

    Whole rows keep both passes in one program, so pass 2 finds much of the row
    in L2; split rows are read again by a second kernel (from L2 only when N·V
    is small), a price worth paying only when rows alone would leave SMs idle.
    """
    block = block or min(MAX_BLOCK, triton.next_power_of_2(vocab))
    if pieces is None:
        sms = _multiprocessors(device)
        pieces = 1 if n >= sms else min(triton.cdiv(vocab, block), triton.cdiv(2 * sms, n))
    piece = triton.cdiv(triton.cdiv(vocab, max(pieces, 1)), block) * block
    return block, piece, triton.cdiv(vocab, piece)


def triton_loss(student: torch.Tensor, teacher: torch.Tensor, *, tau: float, alpha: float,
                labels: torch.Tensor | None, mask: torch.Tensor | None, label_smoothing: float,
                block: int | None = None, pieces: int | None = None) -> torch.Tensor:
    """Mean KD loss over the kept rows of [N, V] logits, with its gradient attached.

    block, pieces: override the launch plan (tests use them to reach the split
    path and multi-block loops with small shapes).
    """
    n, vocab = student.shape
    device = student.device
    wide = torch.float64 in (student.dtype, teacher.dtype)
    acc = torch.float64 if wide else torch.float32
    # Each tensor keeps its own dtype (a float32 teacher with a bf16 student stays
    # float32); the kernel casts every load. Only the last dim must be contiguous.
    s, t = student.detach(), teacher.detach()
    s = s if s.stride(1) == 1 else s.contiguous()
    t = t if t.stride(1) == 1 else t.contiguous()
    keep = torch.ones(n, dtype=torch.bool, device=device) if mask is None else mask.to(torch.bool)
    weight = keep.to(acc) / keep.sum().clamp(min=1)  # 1/n_kept, 0 for a masked row; no host sync
    y = torch.zeros(n, dtype=torch.long, device=device) if labels is None else labels.to(torch.long)
    grad = torch.empty_like(s)
    BLOCK, piece, n_pieces = plan(n, vocab, device, block, pieces)
    flags = dict(WITH_KD=alpha > 0, WITH_CE=alpha < 1, ACC=tl.float64 if wide else tl.float32,
                 BLOCK=BLOCK, num_warps=8 if BLOCK >= 2048 else 4)
    loss_rows = torch.empty(n, n_pieces, dtype=acc, device=device)
    if n == 0:
        return attach_grad(student, loss_rows.sum(), grad)
    if n_pieces == 1:
        _kd_row_kernel[(n,)](s, t, grad, y, weight, loss_rows, vocab, tau, alpha, label_smoothing,
                             s.stride(0), t.stride(0), grad.stride(0), **flags)
    else:
        stats = torch.empty(n, n_pieces, N_STATS, dtype=acc, device=device)
        _kd_piece_stats_kernel[(n, n_pieces)](s, t, weight, stats, vocab, tau, piece, n_pieces,
                                              s.stride(0), t.stride(0), **flags)
        _kd_piece_grad_kernel[(n, n_pieces)](s, t, grad, y, weight, stats, loss_rows, vocab, tau,
                                             alpha, label_smoothing, piece, n_pieces, s.stride(0),
                                             t.stride(0), grad.stride(0),
                                             PIECES=triton.next_power_of_2(n_pieces), **flags)
    return attach_grad(student, loss_rows.sum(), grad)
