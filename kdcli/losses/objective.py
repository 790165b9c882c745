"""The training objectives a stage hands to the loop: hard labels, or the KD loss.

An objective is called as `objective(logits, x, targets, positions)`: the student's
logits of a batch [B, ..., V], its model inputs, its targets [B, ...] and the batch's
positions in the training split (by which stored teacher logits are looked up). It
returns the mean loss over the batch's rows (one per sample, or per token position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdcli.losses import kd_loss
from kdcli.losses.topk import topk_kd_loss
from kdcli.task import Task
from kdcli.teacher import StoredRows, TeacherRows


@dataclass
class LabelLoss:
    """Cross-entropy with the hard targets (and label smoothing ε), mean over counted rows."""

    task: Task
    label_smoothing: float = 0.0

    def __call__(self, logits, x, targets, positions) -> torch.Tensor:
        s, y = self.task.rows(logits, targets)
        return F.cross_entropy(s, y, label_smoothing=self.label_smoothing)  # ignore_index = IGNORE


@dataclass
class KDLoss:
    """α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) + (1−α)·CE(y, s), mean over counted rows.

    `teacher` gives the teacher's logits of the batch (stored or computed); `backend` is
    already resolved for the device (kdcli.losses.resolve_backend). Stored top-k rows go to
    losses/topk.py as they are, with the tail treatment `topk_tail`.
    """

    task: Task
    tau: float
    alpha: float
    backend: str
    teacher: TeacherRows | None  # None when α = 0: no teacher term
    label_smoothing: float = 0.0
    topk_tail: str = "uniform"

    def __call__(self, logits, x, targets, positions) -> torch.Tensor:
        if isinstance(self.teacher, StoredRows) and self.teacher.sparse:
            s, y = self.task.rows(logits, targets)
            return topk_kd_loss(s, self.teacher.topk(positions).reshape_rows(), tau=self.tau,
                                alpha=self.alpha, labels=y, mask=self.task.mask(targets),
                                tail=self.topk_tail, label_smoothing=self.label_smoothing)
        t = self.teacher(positions, x) if self.teacher is not None else logits.detach()
        return kd_loss(logits, t, tau=self.tau, alpha=self.alpha, labels=targets,
                       mask=self.task.mask(targets), backend=self.backend,
                       label_smoothing=self.label_smoothing)
