"""`--stack-seeds`: the points of a sweep that differ only in their seed, trained as one model
stack (kdcli/train/stacked.py), each written to its own run dir with exactly the artifacts of a
separate run, and `stacked` in run.json saying so (with the stated tolerance)."""

from __future__ import annotations

from contextlib import ExitStack

from kdcli.progress import Progress
from kdcli.stages import distill, rundir, train
from kdcli.train.stacked import TOLERANCE, check_stackable, fit_stacked


def run(stage: str, configs: list, progress: Progress | None = None) -> list[rundir.RunResult]:
    """Train `configs` (one point, several seeds) together; completed ones are skipped."""
    module = distill if stage == "distill" else train
    planned = [module.plan(cfg) for cfg in configs]
    plans = [p for p in planned if isinstance(p, rundir.Plan)]
    if len(plans) == 1:  # nothing to stack with
        return [p if isinstance(p, rundir.RunResult) else rundir.train_and_finish(p, progress) for p in planned]
    if plans:
        check_stackable(plans)
    done = {}
    if plans:
        with ExitStack() as stack:
            outs = [stack.enter_context(rundir.claim(pl.p.cfg, pl.action)) for pl in plans]
            rows = fit_stacked(plans, progress)
            seeds = [pl.p.cfg.seed for pl in plans]
            for pl, out, r in zip(plans, outs, rows):
                info = {**pl.info, "stacked": {"seeds": seeds, "tolerance": TOLERANCE}}
                done[id(pl)] = rundir.RunResult(out, False, rundir.finish(pl.p, out, r, pl.attempts, info, pl.evaluator), r)
    return [p if isinstance(p, rundir.RunResult) else done[id(p)] for p in planned]
