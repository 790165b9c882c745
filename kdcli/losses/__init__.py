"""The knowledge-distillation loss behind one interface, with pluggable backends.

    L = mean over kept rows of  α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) + (1−α)·CE(y, s)

τ² keeps the gradient scale comparable across temperatures (Hinton et al. 2015),
and it is applied whatever α is (unlike tools that add it only when a CE term is
present). The CE term is at τ = 1 on the raw student logits, with optional label
smoothing. The mean is over rows (samples, or tokens for language models) that
`mask` keeps; with no kept row the loss is 0.

Backends: `eager` (the reference in losses/eager.py). `auto` picks the fastest
available backend for the device; `resolve_backend` says which, for provenance.
Further backends register in BACKENDS with the same row-loss signature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdcli.errors import ConfigError
from kdcli.losses.eager import kd_rows

# name -> fn(student, teacher, tau) -> per-row τ²·KL, differentiable in student
BACKENDS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {"eager": kd_rows}


def resolve_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """The backend `auto` (or a named one) resolves to on this device."""
    if backend == "auto":
        return "eager"
    if backend not in BACKENDS:
        raise ConfigError(f"--kd-backend {backend!r}: choose auto or one of {', '.join(sorted(BACKENDS))}")
    return backend


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float,
            alpha: float = 1.0, labels: torch.Tensor | None = None, mask: torch.Tensor | None = None,
            backend: str = "auto", label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean KD loss as a 0-d tensor, differentiable with respect to `student_logits`.

    student_logits, teacher_logits: [N, V] (any leading shape is flattened to rows).
    labels: [N] class ids, needed when alpha < 1. mask: [N] bool, True = row counts.
    """
    if not tau > 0:
        raise ConfigError(f"--tau must be > 0, got {tau}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ in shape")
    if alpha < 1 and labels is None:
        raise ConfigError("kd_loss: labels are needed when alpha < 1")
    vocab = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    if alpha == 0 and mask is None:
        # Exactly the cross-entropy train-labels uses, so α = 0 reproduces it bit for bit.
        return F.cross_entropy(s, labels.reshape(-1), label_smoothing=label_smoothing)
    if mask is not None:
        # Drop masked rows before any maths: a padded row may hold NaN or all −inf,
        # and NaN would leak into the gradient through a zero-weighted sum.
        keep = mask.reshape(-1).to(torch.bool)
        s, t = s[keep], t[keep]
        labels = None if labels is None else labels.reshape(-1)[keep]
        if len(s) == 0:
            return (student_logits * 0).sum()
    rows = torch.zeros(len(s), dtype=torch.promote_types(s.dtype, torch.float32), device=s.device)
    if alpha > 0:
        rows = rows + alpha * BACKENDS[resolve_backend(backend, s.device)](s, t, tau)
    if alpha < 1:
        rows = rows + (1 - alpha) * F.cross_entropy(s.to(rows.dtype), labels.reshape(-1), reduction="none",
                                                    label_smoothing=label_smoothing)
    return rows.mean()
