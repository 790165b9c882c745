"""`train-teacher` and `train-labels`: a model trained on hard labels.

A teacher trains on the dataset's whole train split (its pool, n_T samples). A
label-trained student trains on a κ subset of a pool; given --teacher, the
dataset, pool and n_T come from the teacher's run, so the student's κ refers
to the teacher it will be compared with, and the per-epoch fidelity columns
(teacher_agreement, teacher_kl) are recorded as for a `distill` student.
"""

from __future__ import annotations

import torch.nn.functional as F

from kdcli.config import TrainConfig
from kdcli.io.provenance import now_iso
from kdcli.stages.common import (
    RunResult,
    fidelity_metrics,
    finish_run,
    guard_run_dir,
    prepare,
    skipped,
    start_run_dir,
)
from kdcli.train.loop import Callbacks, fit


def run(cfg: TrainConfig, callbacks: Callbacks | None = None) -> RunResult:
    action = guard_run_dir(cfg)
    if action == "skip":
        return skipped(cfg)
    started = now_iso()
    p = prepare(cfg, action)
    cfg = p.cfg

    def loss_fn(logits, _x, labels, _positions):
        return F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)

    out = start_run_dir(cfg, action)
    rows = fit(cfg, p.model, p.subset.split, p.dataset.test(), normalise=p.dataset.normalise,
               loss_fn=loss_fn, device=p.device, run_dir=out, callbacks=callbacks,
               extra_metrics=fidelity_metrics(p))
    run = finish_run(cfg, out, stage_info={"method": "labels"}, model=p.model,
                     model_args=p.model_args, dataset=p.dataset, subset=p.subset, rows=rows,
                     started=started, teacher=p.teacher)
    return RunResult(out, False, run, rows)
