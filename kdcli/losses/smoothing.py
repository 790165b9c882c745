"""The label-smoothing control: ε matched to the teacher's soft labels on the student's subset.

PyTorch's smoothing puts ε·(C−1)/C on the non-target classes, so the ε whose smoothed
targets carry the teacher's mean non-target mass m = mean over rows of 1 − softmax(t/τ)[y]
is ε = m·C/(C−1) (capped at 0.999).
"""

from __future__ import annotations

import torch

from kdcli.data.base import Split
from kdcli.errors import ConfigError
from kdcli.task import Task
from kdcli.teacher import TeacherRows
from kdcli.train.loop import inference_batch


@torch.inference_mode()
def matched_smoothing(teacher: TeacherRows, subset: Split, task: Task, tau: float, model_input,
                      device: torch.device, batch_size: int) -> float:
    """ε for `train-labels --match-smoothing-tau τ`, from the teacher's logits batch by batch."""
    c = task.outputs
    if c < 2:
        raise ConfigError("--match-smoothing-tau: label smoothing needs at least two classes")
    target_mass = []  # one float64 per row: never a split's logits
    batch_size = inference_batch(batch_size, subset, task)
    for start in range(0, len(subset), batch_size):
        positions = torch.arange(start, min(start + batch_size, len(subset)), device=device)
        x = model_input(subset.x[start:start + batch_size].to(device))
        logits, targets = task.rows(teacher(positions, x).double(), subset.y[start:start + batch_size].to(device))
        mask = task.mask(targets)
        if mask is not None:
            logits, targets = logits[mask], targets[mask]
        probs = torch.softmax(logits / tau, dim=-1)
        target_mass.append(probs[torch.arange(len(targets), device=device), targets].cpu())
    mass = 1.0 - torch.cat(target_mass).mean().item()
    return min(mass * c / (c - 1), 0.999)
