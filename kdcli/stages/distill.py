"""`distill`: a student trained on a teacher's soft labels, paired with `train-labels`.

For the same teacher, κ, subset seed and seed, the student sees the same subset,
starts from the same weights and gets the same batches in the same order as the
label-trained student; only the loss differs. Offline (--logits) the teacher's
stored logits of each sample are looked up; online (--teacher alone) the teacher
runs on each (possibly augmented) batch.
"""

from __future__ import annotations

import torch

from kdcli.config import DistillConfig
from kdcli.io.provenance import now_iso
from kdcli.losses import kd_loss, resolve_backend
from kdcli.stages.common import (
    RunResult,
    fidelity_metrics,
    finish_run,
    guard_run_dir,
    prepare,
    skipped,
    start_run_dir,
)
from kdcli.stages.teacher import load_teacher_model
from kdcli.train.loop import Callbacks, fit


def run(cfg: DistillConfig, callbacks: Callbacks | None = None) -> RunResult:
    action = guard_run_dir(cfg)
    if action == "skip":
        return skipped(cfg)
    started = now_iso()
    p = prepare(cfg, action)
    cfg = p.cfg
    backend = resolve_backend(cfg.kd_backend, p.device)
    train = p.subset.split

    if p.teacher.logits is not None:
        from kdcli.io.logits import read_logits

        stored = read_logits(p.teacher.logits, "train")
        subset_logits = stored.rows_for(train.index.numpy(), f"--logits {p.teacher.logits}").to(p.device)

        def teacher_fn(_x, positions):
            return subset_logits[positions]
    else:
        teacher = load_teacher_model(p.teacher, p.device)

        def teacher_fn(x, _positions):
            with torch.no_grad():
                return teacher(x).float()

    def loss_fn(logits, x, labels, positions):
        t = teacher_fn(x, positions) if cfg.alpha > 0 else logits.detach()
        return kd_loss(logits, t, tau=cfg.tau, alpha=cfg.alpha, labels=labels, backend=backend,
                       label_smoothing=cfg.label_smoothing)

    extra = fidelity_metrics(p)
    out = start_run_dir(cfg, action)
    rows = fit(cfg, p.model, train, p.dataset.test(), normalise=p.dataset.normalise, loss_fn=loss_fn,
               device=p.device, run_dir=out, callbacks=callbacks, extra_metrics=extra)
    kd = {"tau": cfg.tau, "alpha": cfg.alpha, "backend": backend,
          "mode": "offline" if p.teacher.logits else "online",
          "loss": "alpha*tau^2*KL(softmax(t/tau)||softmax(s/tau)) + (1-alpha)*CE(y,s), mean over samples"}
    if p.teacher.logits_meta and p.teacher.logits_meta.get("topk"):
        kd["topk_tail"] = "V-K tail classes share the stored tail mass equally"
    run = finish_run(cfg, out, stage_info={"method": "kd", "kd": kd}, model=p.model,
                     model_args=p.model_args, dataset=p.dataset, subset=p.subset, rows=rows,
                     started=started, teacher=p.teacher)
    return RunResult(out, False, run, rows)
