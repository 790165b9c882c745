"""`distill`: a student trained on a teacher's soft labels, paired with `train-labels`.

For the same teacher, κ, subset seed and seed, the student sees the same subset,
starts from the same weights and gets the same batches in the same order as the
label-trained student; only the loss differs. Offline (--logits) the teacher's
stored logits of each sample are looked up, batch by batch; online (--teacher
alone) the teacher runs on each (possibly augmented) batch.
"""

from __future__ import annotations

from pathlib import Path

from kdcli.config import DistillConfig
from kdcli.errors import ConfigError
from kdcli.io.provenance import this_attempt
from kdcli.losses import resolve_backend
from kdcli.losses.objective import KDLoss
from kdcli.progress import Progress
from kdcli.stages import rundir
from kdcli.stages.inputs import prepare, resolve

TAIL = {"uniform": "V-K tail classes share the stored tail mass equally",
        "bucket": "(K+1)-bucket KL: top-k classes plus one rest bucket"}
LOSS = "alpha*tau^2*KL(softmax(t/tau)||softmax(s/tau)) + (1-alpha)*CE(y,s), mean over rows"


def run(cfg: DistillConfig, progress: Progress | None = None) -> rundir.RunResult:
    planned = plan(cfg)
    return planned if isinstance(planned, rundir.RunResult) else rundir.train_and_finish(planned, progress)


def plan(cfg: DistillConfig) -> rundir.Plan | rundir.RunResult:
    """The run ready to train, or the completed run it would skip (RunResult.skipped)."""
    resolved = resolve(cfg)
    action, done = rundir.decide(resolved.cfg)
    if action == "skip":
        return rundir.RunResult(Path(resolved.cfg.out), True, done)
    attempts = [this_attempt()]
    p = prepare(resolved)
    c = p.cfg

    train = p.subset.split
    topk = (p.teacher.logits_meta or {}).get("topk")
    if topk and c.alpha > 0 and c.kd_backend != "auto":
        raise ConfigError(f"--kd-backend {c.kd_backend}: --logits {p.teacher.logits} holds top-{topk} rows, "
                          "not full ones; they go to the top-k loss as stored (--topk-tail), which no "
                          "dense backend takes. Leave --kd-backend at auto, or dump full logits")
    backend = "topk" if topk and c.alpha > 0 else resolve_backend(c.kd_backend, p.device)
    objective = KDLoss(p.task, c.tau, c.alpha, backend,
                       p.teacher_rows("train", train) if c.alpha > 0 else None, c.label_smoothing,
                       c.topk_tail)
    evaluator = p.evaluator()  # with fidelity; a bad logits file fails here, before --out

    kd = {"tau": c.tau, "alpha": c.alpha, "backend": objective.backend,
          "mode": "offline" if p.teacher.logits else "online", "loss": LOSS}
    if topk:
        kd["topk"] = topk
        kd["topk_tail"], kd["topk_tail_definition"] = c.topk_tail, TAIL[c.topk_tail]

    return rundir.Plan(action, p, objective, evaluator, {"method": "kd", "kd": kd}, attempts)
