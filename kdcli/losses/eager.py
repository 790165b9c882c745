"""The readable reference KD loss, row by row; every other backend must match it.

    row_i = α·τ²·KL(softmax(t_i/τ) ‖ softmax(s_i/τ)) + (1−α)·CE(y_i, s_i)

The KL uses log-softmax of both sides in float32 (or float64 for float64
input). A teacher logit of −inf has probability 0 and contributes 0 (not NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_rows(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) for each row, in float32 or wider."""
    dtype = torch.promote_types(student.dtype, torch.float32)
    log_ps = F.log_softmax(student.to(dtype) / tau, dim=-1)
    log_pt = F.log_softmax(teacher.to(dtype) / tau, dim=-1)
    pt = log_pt.exp()
    terms = torch.where(pt > 0, pt * (log_pt - log_ps), torch.zeros((), dtype=dtype, device=pt.device))
    return tau * tau * terms.sum(-1)


def eager_loss(student: torch.Tensor, teacher: torch.Tensor, *, tau: float, alpha: float,
               labels: torch.Tensor | None, mask: torch.Tensor | None,
               label_smoothing: float) -> torch.Tensor:
    """Mean loss over the kept rows of [N, V] logits, differentiated by autograd."""
    s, t = student, teacher
    if mask is not None:
        # Drop masked rows before any maths: a padded row may hold NaN or all −inf,
        # and NaN would leak into the gradient through a zero-weighted sum.
        keep = mask.to(torch.bool)
        s, t = s[keep], t[keep]
        labels = None if labels is None else labels[keep]
        if len(s) == 0:  # 0, with a zero gradient even through rows of NaN
            zero = torch.where(keep[:, None], student, 0).sum()
            return zero.to(torch.promote_types(zero.dtype, torch.float32))
    rows = torch.zeros(len(s), dtype=torch.promote_types(s.dtype, torch.float32), device=s.device)
    if alpha > 0:
        rows = rows + alpha * kd_rows(s, t, tau)
    if alpha < 1:
        rows = rows + (1 - alpha) * F.cross_entropy(s.to(rows.dtype), labels, reduction="none",
                                                    label_smoothing=label_smoothing)
    return rows.mean()
