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
from kdcli.stages.common import RunResult, run_stage
from kdcli.train.loop import Callbacks


def run(cfg: TrainConfig, callbacks: Callbacks | None = None) -> RunResult:
    def make_loss(p):
        smoothing = p.cfg.label_smoothing

        def loss_fn(logits, _x, labels, _positions):
            return F.cross_entropy(logits, labels, label_smoothing=smoothing)

        return loss_fn

    return run_stage(cfg, callbacks, method="labels", make_loss=make_loss)
