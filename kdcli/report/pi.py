"""Aggregate pairs into PI rows: one per (arm, model, teacher, κ, group-by values)."""

from __future__ import annotations

import math
from collections import defaultdict

from kdcli.report.pairs import Pair, setting
from kdcli.report.stats import bootstrap_ci, mean_ci, nanmean, pearson
from kdcli.task import Task


def final_metric(run: dict, key: str) -> float:
    """A final metric, NaN when the run did not record it."""
    value = run["final"].get(key)
    return math.nan if value is None else value


def primary(run: dict) -> float:
    """The run's primary metric as tables show it (accuracy in %)."""
    task = Task.of_run(run)
    return task.display(final_metric(run, task.primary))


def pair_pi(p: Pair) -> float:
    """PI of one pair, as the task defines it from its primary metric (for classification
    acc(arm) − acc(labels) in points)."""
    task = Task.of_run(p.run)
    return task.pi_value(final_metric(p.run, task.primary), final_metric(p.labels, task.primary))


def agreement_gain(p: Pair) -> float:
    """Top-1 agreement with the teacher, arm minus labels, in points."""
    return 100 * (final_metric(p.run, "teacher_agreement") - final_metric(p.labels, "teacher_agreement"))


def arm_order(arm: str, kd: dict) -> tuple:
    """KD arms by τ then α (numerically), then label-smoothing arms."""
    return (0, kd["tau"], -kd["alpha"], arm) if kd else (1, 0.0, 0.0, arm)


def varying_fields(pairs: list[Pair]) -> list[str]:
    """Shared settings that differ between pairs (besides seeds and κ): rows must split on them."""
    values: dict[str, set] = defaultdict(set)
    for p in pairs:
        for k, v in setting(p.run).items():
            values[k].add(str(v))
    return sorted(k for k, v in values.items() if len(v) > 1 and k not in ("seed", "subset_seed", "kappa"))


def pi_rows(pairs: list[Pair], teacher_metric: dict[str, float], group_by: tuple[str, ...] = (),
            bootstrap: int = 0) -> list[dict]:
    """The primary metric of both arms (accuracy in %) and PI as the task defines it (points for
    accuracy); fidelity (agreement in points, KL in nats) of both arms.

    Rows pool the pairs that differ only in seed and subset seed; `group_by` should
    include every other setting that varies (see varying_fields).
    """
    groups: dict[tuple, list[Pair]] = defaultdict(list)
    for p in pairs:
        extra = tuple(p.run["config"].get(g) for g in group_by)
        groups[(p.arm, p.run["model"]["name"], p.run["teacher"]["run_id"], *extra,
                p.run["subset"]["kappa"])].append(p)
    def order(item):
        key, members = item
        kd = members[0].run.get("kd") or {}
        return (arm_order(key[0], kd), tuple(str(k) for k in key[1:-1]), key[-1])

    rows = []
    for key, members in sorted(groups.items(), key=order):
        arm, model, teacher = key[:3]
        kappa = key[-1]
        task = Task.of_run(members[0].run)
        diffs = [pair_pi(p) for p in members]
        pi, lo, hi = bootstrap_ci(diffs, bootstrap) if bootstrap else mean_ci(diffs)
        kd = members[0].run.get("kd") or {}
        rows.append({
            "arm": arm, "model": model, "teacher": teacher,
            **{g: v for g, v in zip(group_by, key[3:-1])},
            "tau": kd.get("tau"), "alpha": kd.get("alpha"),
            "label_smoothing": members[0].run["config"].get("label_smoothing", 0.0),
            "kappa": kappa, "n_train": members[0].run["subset"]["size"], "pairs": len(members),
            "metric": task.primary, "pi_method": task.pi,
            "arm_metric": nanmean([primary(p.run) for p in members]),
            "labels_metric": nanmean([primary(p.labels) for p in members]),
            "pi": pi, "pi_lo": lo, "pi_hi": hi, "ci": "bootstrap" if bootstrap else "t",
            "teacher_metric": teacher_metric.get(teacher, math.nan),
            "arm_agreement": 100 * nanmean([final_metric(p.run, "teacher_agreement") for p in members]),
            "labels_agreement": 100 * nanmean([final_metric(p.labels, "teacher_agreement") for p in members]),
            "arm_kl": nanmean([final_metric(p.run, "teacher_kl") for p in members]),
            "labels_kl": nanmean([final_metric(p.labels, "teacher_kl") for p in members]),
            "seeds": sorted(p.run["config"]["seed"] for p in members),
        })
    return rows


def fidelity_correlation(pairs: list[Pair]) -> dict[str, dict[str, float]]:
    """Per arm, across pairs: r(PI, Δagreement) and r(PI, −ΔKL) — does fidelity track the gain?"""
    out = {}
    by_arm: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_arm[p.arm].append(p)
    for name, members in sorted(by_arm.items(), key=lambda kv: arm_order(kv[0], kv[1][0].run.get("kd") or {})):
        pi = [pair_pi(p) for p in members]
        d_agree = [agreement_gain(p) for p in members]
        d_kl = [final_metric(p.labels, "teacher_kl") - final_metric(p.run, "teacher_kl") for p in members]
        out[name] = {"pairs": len(members), "r_pi_agreement_gain": pearson(pi, d_agree),
                     "r_pi_kl_reduction": pearson(pi, d_kl)}
    return out
