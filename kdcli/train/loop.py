"""The one training loop behind train-teacher, train-labels and distill.

Data lives in memory as tensors (on the device); each epoch draws a permutation
from a generator seeded by --seed, so two runs with the same seed and subset see
the same batches in the same order whatever their loss (the pairing of DESIGN.md).
Model selection: the weights after the last step; no epoch is chosen on the test set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from kdcli.config import TrainConfig
from kdcli.data.augment import augment
from kdcli.data.base import Split
from kdcli.io.runs import CKPT_STATE
from kdcli.train.schedule import lr_at, make_optimizer
from kdcli.train.state import load_state, save_state

# loss_fn(student_logits, inputs, labels, positions in the training split) -> 0-d loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Callbacks:
    """Progress hooks; the CLI draws its progress bar through them. No-ops by default."""

    def on_start(self, total_steps: int, done_steps: int) -> None: ...
    def on_step(self, step: int) -> None: ...
    def on_epoch(self, row: dict) -> None: ...


@dataclass
class Evaluation:
    loss: float
    acc: float
    logits: torch.Tensor  # [N, C] float32 on the device


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor, normalise: Callable, batch_size: int,
            on_batch: Callable[[], None] | None = None) -> torch.Tensor:
    """Float32 logits of `model` (in its current mode) on stored samples x, in batches."""
    outs = []
    for i in range(0, len(x), batch_size):
        outs.append(model(normalise(x[i:i + batch_size])).float())
        if on_batch is not None:
            on_batch()
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: torch.nn.Module, split_x: torch.Tensor, split_y: torch.Tensor,
             normalise: Callable, batch_size: int) -> Evaluation:
    was_training = model.training
    model.eval()
    logits = predict(model, split_x, normalise, batch_size)
    model.train(was_training)
    loss = F.cross_entropy(logits, split_y).item()
    acc = (logits.argmax(1) == split_y).sum().item() / len(split_y)
    return Evaluation(loss, acc, logits)


def steps_plan(cfg: TrainConfig, n_train: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, epochs); the last batch of an epoch may be short."""
    per_epoch = math.ceil(n_train / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    return per_epoch, total, math.ceil(total / per_epoch)


def fit(cfg: TrainConfig, model: torch.nn.Module, train: Split, test: Split, *,
        normalise: Callable, loss_fn: LossFn, device: torch.device, run_dir: Path,
        callbacks: Callbacks | None = None,
        extra_metrics: Callable[[torch.Tensor], dict] | None = None) -> list[dict]:
    """Train `model` in place; returns one metrics row per evaluated epoch.

    With cfg.resume the state saved at the last evaluated epoch is restored
    (weights, optimiser, RNG streams), so the run ends with the same weights as
    an uninterrupted one.
    """
    callbacks = callbacks or Callbacks()
    per_epoch, total, n_epochs = steps_plan(cfg, len(train))
    optimizer = make_optimizer(cfg, model)
    generators = {"order": torch.Generator().manual_seed(cfg.seed),
                  "augment": torch.Generator().manual_seed(cfg.seed + 1_000_003)}
    # Loading a teacher builds a network and draws from the global RNG; reseed so the
    # global stream (dropout, stochastic depth) is the same in both arms of a pair.
    torch.manual_seed(cfg.seed + 2_000_003)
    rows: list[dict] = []
    epoch = step = 0
    if cfg.resume and (run_dir / CKPT_STATE).is_file():
        progress = load_state(run_dir, model=model, optimizer=optimizer, generators=generators)
        epoch, step, rows = progress["epoch"], progress["step"], progress["rows"]

    x, y = train.x.to(device), train.y.to(device)
    test_x, test_y = test.x.to(device), test.y.to(device)
    callbacks.on_start(total, step)
    model.train()
    while epoch < n_epochs:
        started = time.perf_counter()
        perm = torch.randperm(len(y), generator=generators["order"]).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for b in range(per_epoch):
            if step >= total:
                break
            pos = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = x[pos], y[pos]
            if cfg.augment:
                xb = augment(xb, generators["augment"])
            xb = normalise(xb)
            lr = lr_at(cfg, step, total, per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(xb)
            loss = loss_fn(logits, xb, yb, pos)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
            callbacks.on_step(step)
        epoch += 1
        if epoch % cfg.eval_every and epoch < n_epochs:
            continue
        ev = evaluate(model, test_x, test_y, normalise, cfg.eval_batch_size)
        row = {"epoch": epoch, "step": step, "train_loss": (loss_sum / seen).item(),
               "train_acc": correct.item() / seen, "test_loss": ev.loss, "test_acc": ev.acc,
               "lr": lr, "seconds": time.perf_counter() - started}
        if extra_metrics is not None:
            row.update(extra_metrics(ev.logits))
        rows.append(row)
        callbacks.on_epoch(row)
        if epoch < n_epochs:
            save_state(run_dir, model=model, optimizer=optimizer, generators=generators,
                       progress={"epoch": epoch, "step": step, "rows": rows,
                                 "config": cfg.training_fields()})
    return rows
