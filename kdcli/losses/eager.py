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
