"""Optimisers and learning-rate schedules. The lr is a pure function of the step,
so resuming needs no scheduler state."""

from __future__ import annotations

import math

import torch

from kdcli.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """--optimizer over `params` (a model's trainable parameters, or a stack of several
    models' parameters: both optimisers act elementwise)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        passed = sum(step >= m * total_steps for m in cfg.step_milestones)
        return cfg.lr * cfg.step_gamma ** passed
    return cfg.lr
