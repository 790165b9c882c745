"""Stacked seeds: S runs that differ only in their seed trained as one model stack.

The S models (each built from its own seed) are stacked with torch.func.stack_module_state,
and one vmapped functional_call computes all S forward passes per step. Each run keeps its
own batch order and augmentation (its own generators, seeded as `fit` seeds them), its own κ
subset, objective and evaluation; the losses are summed, so each stacked parameter receives
exactly its run's gradient, and the optimiser (AdamW or SGD: elementwise) updates each slice as
it would alone. The arithmetic is the same; its float rounding is not (batched kernels sum in
another order), so stacked runs match separate runs to float tolerance, not bit for bit.

Refused, because they would not be exact: batch-norm running statistics (a stack shares its
buffers' update path), gradient clipping by global norm (the norm would span all S runs),
random operations in the forward pass (dropout: vmap would draw differently than a run
alone). Stacked runs write no checkpoints (a killed stack starts again).
"""

from __future__ import annotations

import copy
import math

import torch
from torch.func import functional_call, stack_module_state, vmap

from kdcli.data.augment import augment
from kdcli.errors import ConfigError
from kdcli.progress import Progress
from kdcli.train.loop import EVALUATIONS_BY_DEFAULT, Every, TrainMeter, steps_plan
from kdcli.train.schedule import lr_at, make_optimizer

TOLERANCE = ("float rounding: the same arithmetic as separate runs in another summation order "
             "(batched kernels); not bit for bit")


def check_stackable(plans: list) -> None:
    """Refuse what a stack cannot train exactly (see the module docstring)."""
    cfg, model = plans[0].p.cfg, plans[0].p.model
    flag = "--stack-seeds"
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
             and m.track_running_stats]
    if norms:
        raise ConfigError(f"{flag}: --model {cfg.model} has batch-norm running statistics "
                          f"({type(norms[0]).__name__}), which a stack cannot keep per run; run the seeds "
                          "separately")
    if cfg.grad_clip is not None:
        raise ConfigError(f"{flag}: --grad-clip clips by the global norm of one run's gradients, which a "
                          "stack would compute over all of them; drop --grad-clip or run the seeds separately")
    if cfg.checkpoint_every not in ("0",):
        raise ConfigError(f"{flag}: stacked runs write no checkpoints; pass --checkpoint-every 0")
    resuming = [pl.p.cfg.out for pl in plans if pl.action == "resume"]
    if resuming:
        raise ConfigError(f"{flag}: {resuming[0]} holds an interrupted run; finish it without "
                          "--stack-seeds (--resume) or pass --overwrite")


def fit_stacked(plans: list, progress: Progress | None = None) -> list[list[dict]]:
    """Train the plans' models (in place) as one stack; returns each run's metrics rows."""
    progress = progress or Progress()
    cfg, first = plans[0].p.cfg, plans[0].p
    device, task, model_input = first.device, first.task, first.dataset.model_input
    models = [pl.p.model for pl in plans]
    per_epoch, total = steps_plan(cfg, len(first.subset.split))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    optimizer = make_optimizer(cfg, list(params.values()))
    generators = [{"order": torch.Generator().manual_seed(pl.p.cfg.seed),
                   "augment": torch.Generator().manual_seed(pl.p.cfg.seed + 1_000_003)} for pl in plans]
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), randomness="error")
    evals = Every(cfg.eval_every, "--eval-every", default_steps=math.ceil(total / EVALUATIONS_BY_DEFAULT))
    xs = [pl.p.subset.split.x.to(device) for pl in plans]
    ys = [pl.p.subset.split.y.to(device) for pl in plans]
    evaluators = [pl.evaluator.to(device) for pl in plans]
    meters = [TrainMeter.zeros(device) for _ in plans]
    rows: list[list[dict]] = [[] for _ in plans]
    perms: list[torch.Tensor] = []
    progress.start(total, 0)
    for step in range(total):
        b = step % per_epoch
        if b == 0:
            perms = [torch.randperm(len(y), generator=g["order"]).to(device) for y, g in zip(ys, generators)]
        pos = [perm[b * cfg.batch_size:(b + 1) * cfg.batch_size] for perm in perms]
        xb = [x[i] for x, i in zip(xs, pos)]
        if cfg.augment:
            xb = [augment(x, g["augment"]) for x, g in zip(xb, generators)]
        xb = [model_input(x) for x in xb]
        yb = [y[i] for y, i in zip(ys, pos)]
        lr = lr_at(cfg, step, total, per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            logits = forward(params, buffers, torch.stack(xb))
        except RuntimeError as exc:
            if "randomness" not in str(exc):
                raise
            raise ConfigError(f"--stack-seeds: --model {cfg.model} draws random numbers in its forward "
                              "pass (dropout), which a stack would draw differently; run the seeds "
                              "separately") from None
        losses = [pl.objective(logits[s], xb[s], yb[s], pos[s]) for s, pl in enumerate(plans)]
        optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        optimizer.step()
        for s, meter in enumerate(meters):
            meter.add(losses[s], logits[s], yb[s], task)
        progress.advance(step + 1)
        if step + 1 == total or evals.due(step + 1):
            _unstack(params, models)
            for s in range(len(plans)):
                rows[s].append(meters[s].metrics_row(step + 1, per_epoch, lr, evaluators[s](models[s])))
                meters[s] = TrainMeter.zeros(device)
    _unstack(params, models)
    for pl in plans:
        pl.attempts[-1]["last_step"] = total
    return rows


def _unstack(params: dict[str, torch.Tensor], models: list[torch.nn.Module]) -> None:
    with torch.no_grad():
        for s, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][s])
