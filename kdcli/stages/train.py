"""`train-teacher` and `train-labels`: a model trained on hard labels.

A teacher trains on the dataset's whole train split (its pool, n_T samples). A
label-trained student trains on a κ subset of a pool; given --teacher, the
dataset, pool and n_T come from the teacher's run, so the student's κ refers
to the teacher it will be compared with, and the fidelity columns
(teacher_agreement, teacher_kl) are recorded as for a `distill` student.
"""

from __future__ import annotations

from pathlib import Path

from kdcli.config import TrainConfig
from kdcli.errors import ConfigError
from kdcli.io.provenance import this_attempt
from kdcli.losses.objective import LabelLoss
from kdcli.losses.smoothing import matched_smoothing
from kdcli.progress import Progress
from kdcli.stages import rundir
from kdcli.stages.inputs import prepare, resolve


def run(cfg: TrainConfig, progress: Progress | None = None) -> rundir.RunResult:
    planned = plan(cfg)
    return planned if isinstance(planned, rundir.RunResult) else rundir.train_and_finish(planned, progress)


def plan(cfg: TrainConfig) -> rundir.Plan | rundir.RunResult:
    """The run ready to train, or the completed run it would skip (RunResult.skipped)."""
    if cfg.match_smoothing_tau is not None and cfg.label_smoothing:
        raise ConfigError("--match-smoothing-tau sets ε itself; drop --label-smoothing")
    resolved = resolve(cfg)
    action, done = rundir.decide(resolved.cfg)
    if action == "skip":
        return rundir.RunResult(Path(resolved.cfg.out), True, done)
    attempts = [this_attempt()]
    p = prepare(resolved)

    if p.cfg.match_smoothing_tau is not None:  # the label-smoothing control
        if p.teacher is None:
            raise ConfigError("--match-smoothing-tau needs the teacher: give --teacher or --logits")
        subset = p.subset.split
        eps = matched_smoothing(p.teacher_rows("train", subset), subset, p.task, p.cfg.match_smoothing_tau,
                                p.dataset.model_input, p.device, p.cfg.eval_batch_size)
        p.cfg = p.cfg.replace(label_smoothing=eps)
    objective = LabelLoss(p.task, p.cfg.label_smoothing)
    evaluator = p.evaluator()  # with fidelity when there is a teacher
    return rundir.Plan(action, p, objective, evaluator, {"method": "labels"}, attempts)
