"""Distillation from stored top-k teacher logits, without densifying them.

A top-k row holds the teacher's K largest logits v (ids i), and the log-sum-exp of the
full row, so the mass of the other V − K classes at τ = 1 is known. Two ways to use it
(`--topk-tail`):

- `uniform` (default): the V − K tail classes share the stored tail mass equally, i.e.
  each has the logit  lse + log(tail_mass / (V − K)). Exactly `dense_logits` of
  io/logits.py, so this equals `kd_loss` on the densified row; computed here sparsely:

      KL = Σ_top q_i·(log q_i − log p_i) + Q·log(Q/(V−K)) − (Q/(V−K))·Σ_tail log p_j,
      Σ_tail log p_j = Σ_all log p_j − Σ_top log p_i

- `bucket`: the (K+1)-bucket KL. The tail is one "rest" bucket: the teacher's tail mass
  Q against the student's mass outside the teacher's top k, P = 1 − Σ_top p_i; the shape
  of the student's tail is left free (DistillKit's treatment of a truncated teacher):

      KL = Σ_top q_i·(log q_i − log p_i) + Q·(log Q − log P)

q are the teacher's probabilities at τ (top-k logits and the uniform tail divided by τ),
p the student's softmax(s/τ). With K = V both equal the full KL. The loss, as `kd_loss`:
mean over kept rows of α·τ²·KL + (1−α)·CE(y, s), differentiated by autograd (float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TopK:
    """Teacher rows as stored: values [R, K] (float32), ids [R, K] (int64), lse [R]; or with
    leading dimensions [B, ..., K] (a batch of windows) until `reshape_rows`."""

    values: torch.Tensor
    ids: torch.Tensor
    lse: torch.Tensor
    vocab: int

    def reshape_rows(self) -> TopK:
        """Any leading shape [B, ..., K] flattened to rows [R, K]."""
        k = self.values.shape[-1]
        return TopK(self.values.reshape(-1, k), self.ids.reshape(-1, k), self.lse.reshape(-1), self.vocab)

    def select(self, keep: torch.Tensor) -> TopK:
        return TopK(self.values[keep], self.ids[keep], self.lse[keep], self.vocab)


def teacher_log_probs(top: TopK, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log q of the top-k classes [R, K] and log Q of the whole tail [R] at temperature τ."""
    v = top.values.float()
    k, tail_classes = v.shape[1], top.vocab - v.shape[1]
    if tail_classes == 0:
        return torch.log_softmax(v / tau, 1), torch.full_like(top.lse, -math.inf)
    top_mass = torch.exp(v - top.lse[:, None]).sum(1).clamp(max=1.0)
    tail_mass = (1.0 - top_mass).clamp(min=torch.finfo(torch.float32).tiny)
    tail_logit = top.lse + torch.log(tail_mass / tail_classes)
    # the tail at τ: V − K equal logits tail_logit/τ, as one term of weight log(V − K)
    scaled = torch.cat([v / tau, (tail_logit / tau + math.log(tail_classes))[:, None]], 1)
    log_all = torch.log_softmax(scaled, 1)
    return log_all[:, :k], log_all[:, k]


def _xlogy_terms(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Σ q·(log q − log p) over the last dimension; 0 where q = 0."""
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1)


def topk_kl_rows(student: torch.Tensor, top: TopK, tau: float, tail: str = "uniform") -> torch.Tensor:
    """KL(teacher ‖ student) at τ per row [R] (float32, differentiable in `student` [R, V])."""
    z = student.float()
    log_p = torch.log_softmax(z if tau == 1 else z / tau, 1)  # τ = 1 (the LM default): no [R, V] divide
    log_q, log_qtail = teacher_log_probs(top, tau)
    log_p_top = log_p.gather(1, top.ids)
    kl = _xlogy_terms(log_q, log_p_top)
    tail_classes = top.vocab - top.ids.shape[1]
    if tail_classes == 0:
        return kl
    qtail = log_qtail.exp()
    if tail == "uniform":
        sum_log_p_tail = log_p.sum(1) - log_p_top.sum(1)
        per_class = log_qtail - math.log(tail_classes)
        tail_term = qtail * per_class - per_class.exp() * sum_log_p_tail
    else:
        log_ptail = torch.logsumexp(log_p.scatter(1, top.ids, -math.inf), 1)
        tail_term = qtail * (log_qtail - log_ptail)
    return kl + torch.where(qtail > 0, tail_term, torch.zeros_like(tail_term))


def topk_kd_loss(student: torch.Tensor, top: TopK, *, tau: float, alpha: float = 1.0,
                 labels: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 tail: str = "uniform", label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over kept rows of α·τ²·KL + (1−α)·CE(y, s); student [R, V], rows of `top` [R, K]."""
    if mask is not None:
        student, top = student[mask], top.select(mask)
        labels = None if labels is None else labels[mask]
    if len(student) == 0:
        return student.sum().float()
    loss = alpha * tau * tau * topk_kl_rows(student, top, tau, tail)
    if alpha < 1:
        ce = F.cross_entropy(student.float(), labels, reduction="none", label_smoothing=label_smoothing)
        loss = loss + (1 - alpha) * ce
    return loss.mean()
