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


def relative_reduction(arm: float, labels: float) -> float:
    """100·(labels − arm)/labels: a loss's relative reduction in %."""
    return 100 * (labels - arm) / labels


def ppl_reduction(p: Pair) -> float:
    """Perplexity reduction of one pair in %: 100·(1 − ppl(arm)/ppl(labels)) = 100·(1 − exp(CE_arm − CE_labels))."""
    return 100 * -math.expm1(final_metric(p.run, "test_loss") - final_metric(p.labels, "test_loss"))


def acc_change(p: Pair) -> float:
    """Top-1 accuracy (for sequence tasks: of the next token), arm minus labels, in points."""
    return 100 * (final_metric(p.run, "test_acc") - final_metric(p.labels, "test_acc"))


def ood_pi(p: Pair) -> float:
    """Relative CE reduction (%) on the out-of-distribution test text."""
    return relative_reduction(final_metric(p.run, "ood_test_loss"), final_metric(p.labels, "ood_test_loss"))


def has_ood(p: Pair) -> bool:
    return all(r["final"].get("ood_test_loss") is not None for r in (p.run, p.labels))


def task_kind(p: Pair) -> str:
    """'classification' or 'sequence' (language models): rows and tables of the two never mix."""
    return Task.of_run(p.run).kind


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


def model_labels(pairs: list[Pair]):
    """A function naming a pair's student model: its name, plus the arguments that differ
    between students of that name in `pairs` (e.g. `gpt n_embd=48 n_layer=2`), so students of
    one name but different sizes never share a row."""
    varying: dict[str, set[str]] = defaultdict(set)
    seen: dict[str, dict] = {}
    for p in pairs:
        name, args = p.run["model"]["name"], p.run["model"]["args"]
        first = seen.setdefault(name, args)
        varying[name] |= {k for k in set(first) | set(args) if first.get(k) != args.get(k)}

    def label(run: dict) -> str:
        name, args = run["model"]["name"], run["model"]["args"]
        return " ".join([name, *(f"{k}={args.get(k)}" for k in sorted(varying[name]))])
    return label


def group_pairs(pairs: list[Pair], group_by: tuple[str, ...] = ()) -> list[tuple[tuple, list[Pair]]]:
    """The pairs of each table row, in table order: (key, pairs) with key (arm, model label,
    teacher id, *group_by values, κ, is-sequence); pairs in a row differ only in seed and
    subset seed."""
    groups: dict[tuple, list[Pair]] = defaultdict(list)
    label = model_labels(pairs)
    for p in pairs:
        extra = tuple(p.run["config"].get(g) for g in group_by)
        groups[(p.arm, label(p.run), p.run["teacher"]["run_id"], *extra,
                p.run["subset"]["kappa"], task_kind(p) == "sequence")].append(p)

    def order(item):  # classification rows first; a group never mixes the two kinds
        key, members = item
        kd = members[0].run.get("kd") or {}
        return (key[-1], arm_order(key[0], kd), tuple(str(k) for k in key[1:-2]), key[-2])
    return sorted(groups.items(), key=order)


def pi_rows(pairs: list[Pair], teacher_metric: dict[str, float], group_by: tuple[str, ...] = (),
            bootstrap: int = 0) -> list[dict]:
    """The primary metric of both arms (accuracy in %) and PI as the task defines it (points for
    accuracy); fidelity (agreement in points, KL in nats) of both arms.

    Rows of sequence tasks (language models) add, each with its interval (`_lo`, `_hi`):
    `ppl_reduction` (100·(1 − exp(CE_arm − CE_labels)), %), `acc_change` (top-1 token accuracy,
    arm − labels, points) and, where every pair recorded `ood_test_loss` in both runs, `ood_pi`
    (relative CE reduction on the out-of-distribution text, %; None otherwise); and the arms'
    mean bits per byte (`arm_bpb`, `labels_bpb`). Classification rows have none of these keys.

    Rows pool the pairs that differ only in seed and subset seed; `group_by` should
    include every other setting that varies (see varying_fields).
    """
    interval = (lambda v: bootstrap_ci(v, bootstrap)) if bootstrap else mean_ci
    rows = []
    for key, members in group_pairs(pairs, group_by):
        arm, model, teacher = key[:3]
        kappa = key[-2]
        task = Task.of_run(members[0].run)
        diffs = [pair_pi(p) for p in members]
        pi, lo, hi = interval(diffs)
        kd = members[0].run.get("kd") or {}
        row = {
            "arm": arm, "model": model, "teacher": teacher,
            **{g: v for g, v in zip(group_by, key[3:-2])},
            "tau": kd.get("tau"), "alpha": kd.get("alpha"),
            "label_smoothing": members[0].run["config"].get("label_smoothing", 0.0),
            "kappa": kappa, "n_train": members[0].run["subset"]["size"], "pairs": len(members),
            "metric": task.primary, "pi_method": task.pi,
            "arm_metric": nanmean([primary(p.run) for p in members]),
            "labels_metric": nanmean([primary(p.labels) for p in members]),
            "pi": pi, "pi_lo": lo, "pi_hi": hi, "ci": "bootstrap" if bootstrap else "t",
            "teacher_metric": teacher_value(members, task, teacher_metric.get(teacher, math.nan)),
            "arm_agreement": 100 * nanmean([final_metric(p.run, "teacher_agreement") for p in members]),
            "labels_agreement": 100 * nanmean([final_metric(p.labels, "teacher_agreement") for p in members]),
            "arm_kl": nanmean([final_metric(p.run, "teacher_kl") for p in members]),
            "labels_kl": nanmean([final_metric(p.labels, "teacher_kl") for p in members]),
            "seeds": sorted(p.run["config"]["seed"] for p in members),
        }
        if task.kind == "sequence":
            row.update(sequence_columns(members, interval))
        rows.append(row)
    return rows


def teacher_value(members: list[Pair], task: Task, own: float) -> float:
    """The teacher's primary metric as the row should show it: on its own test split (`own`,
    from its run), except for --cross-dataset classification rows, where it is the teacher's
    accuracy on the students' test split (their runs' `teacher_acc`; NaN for runs made before
    kdcli recorded it). A language model's primary metric is its loss, which the students' runs
    do not record for the teacher: those rows keep `own`."""
    if not members[0].run["config"].get("cross_dataset") or task.primary != "test_acc":
        return own
    return task.display(nanmean([final_metric(r, "teacher_acc") for p in members for r in (p.run, p.labels)]))


def sequence_columns(members: list[Pair], interval) -> dict:
    """A language-model row's perplexity, token-accuracy, bits-per-byte and OOD columns."""
    out = {}
    for name, per_pair in (("ppl_reduction", ppl_reduction), ("acc_change", acc_change)):
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = interval([per_pair(p) for p in members])
    out["arm_bpb"] = nanmean([final_metric(p.run, "test_bpb") for p in members])
    out["labels_bpb"] = nanmean([final_metric(p.labels, "test_bpb") for p in members])
    if all(has_ood(p) for p in members):
        out["ood_pi"], out["ood_pi_lo"], out["ood_pi_hi"] = interval([ood_pi(p) for p in members])
    else:
        out["ood_pi"] = out["ood_pi_lo"] = out["ood_pi_hi"] = None
    return out


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
