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
from kdcli.io.provenance import now_iso
from kdcli.losses import resolve_backend
from kdcli.losses.objective import KDLoss
from kdcli.progress import Progress
from kdcli.stages import rundir
from kdcli.stages.inputs import prepare, resolve
from kdcli.train.loop import fit

LOSS = "alpha*tau^2*KL(softmax(t/tau)||softmax(s/tau)) + (1-alpha)*CE(y,s), mean over rows"


def run(cfg: DistillConfig, progress: Progress | None = None) -> rundir.RunResult:
    resolved = resolve(cfg)
    action, done = rundir.decide(resolved.cfg)
    if action == "skip":
        return rundir.RunResult(Path(resolved.cfg.out), True, done)
    started = now_iso()
    p = prepare(resolved)
    c = p.cfg

    train = p.subset.split
    objective = KDLoss(p.task, c.tau, c.alpha, resolve_backend(c.kd_backend, p.device),
                       p.teacher_rows("train", train) if c.alpha > 0 else None, c.label_smoothing)
    test = p.dataset.test()
    teacher_test = p.teacher_rows("test", test)  # fidelity; a bad logits file fails here, before --out

    kd = {"tau": c.tau, "alpha": c.alpha, "backend": objective.backend,
          "mode": "offline" if p.teacher.logits else "online", "loss": LOSS}
    if p.teacher.logits_meta and p.teacher.logits_meta.get("topk"):
        kd["topk"] = p.teacher.logits_meta["topk"]
        kd["topk_tail"] = "V-K tail classes share the stored tail mass equally"

    with rundir.claim(c, action) as out:
        rows = fit(c, p.model, train, test, task=p.task, model_input=p.dataset.model_input,
                   objective=objective, device=p.device, run_dir=out, progress=progress,
                   teacher_test=teacher_test)
        run = rundir.finish(p, out, rows, started, {"method": "kd", "kd": kd})
    return rundir.RunResult(out, False, run, rows)
