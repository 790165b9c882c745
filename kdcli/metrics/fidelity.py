"""Fidelity of a student to its teacher on the same inputs (Stanton et al. 2021).

teacher_agreement: fraction of samples where the top-1 classes agree.
teacher_kl: mean KL(softmax(t) ‖ softmax(s)) at τ = 1, in nats.
"""

from __future__ import annotations

import torch

from kdcli.losses.eager import kd_rows


def fidelity(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> dict[str, float]:
    s, t = student_logits.double(), teacher_logits.double()
    return {
        "teacher_agreement": (s.argmax(1) == t.argmax(1)).double().mean().item(),
        "teacher_kl": kd_rows(s, t, 1.0).mean().item(),
    }
