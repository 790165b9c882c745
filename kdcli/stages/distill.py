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
from kdcli.losses import kd_loss, resolve_backend
from kdcli.stages.common import Prepared, RunResult, run_stage
from kdcli.stages.teacher import load_teacher_model
from kdcli.train.loop import Callbacks


def _teacher_fn(p: Prepared):
    """Teacher logits for a batch: looked up by position (offline) or computed (online)."""
    if p.teacher.logits is not None:
        from kdcli.io.logits import read_logits

        stored = read_logits(p.teacher.logits, "train")
        subset_logits = stored.rows_for(p.subset.split.index.numpy(), f"--logits {p.teacher.logits}")
        subset_logits = subset_logits.to(p.device)
        return lambda _x, positions: subset_logits[positions]
    teacher = load_teacher_model(p.teacher, p.device)

    def online(x, _positions):
        with torch.no_grad():
            return teacher(x).float()

    return online


def run(cfg: DistillConfig, callbacks: Callbacks | None = None) -> RunResult:
    def make_loss(p: Prepared):
        c = p.cfg
        backend = resolve_backend(c.kd_backend, p.device)
        teacher_fn = _teacher_fn(p) if c.alpha > 0 else None

        def loss_fn(logits, x, labels, positions):
            t = teacher_fn(x, positions) if teacher_fn is not None else logits.detach()
            return kd_loss(logits, t, tau=c.tau, alpha=c.alpha, labels=labels, backend=backend,
                           label_smoothing=c.label_smoothing)

        return loss_fn

    def stage_info(p: Prepared) -> dict:
        kd = {"tau": p.cfg.tau, "alpha": p.cfg.alpha, "backend": resolve_backend(p.cfg.kd_backend, p.device),
              "mode": "offline" if p.teacher.logits else "online",
              "loss": "alpha*tau^2*KL(softmax(t/tau)||softmax(s/tau)) + (1-alpha)*CE(y,s), mean over samples"}
        if p.teacher.logits_meta and p.teacher.logits_meta.get("topk"):
            kd["topk"] = p.teacher.logits_meta["topk"]
            kd["topk_tail"] = "V-K tail classes share the stored tail mass equally"
        return {"kd": kd}

    return run_stage(cfg, callbacks, method="kd", make_loss=make_loss, stage_info=stage_info)
