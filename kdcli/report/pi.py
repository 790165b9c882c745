"""PI (performance increment) per κ: acc(KD) − acc(labels) over paired seeds."""

from __future__ import annotations

from collections import defaultdict

from kdcli.report.pairs import Pairing
from kdcli.report.stats import mean_ci


def pi_rows(pairing: Pairing, teacher_acc: dict[str, float]) -> list[dict]:
    """One row per (teacher, student model, τ, α, κ), accuracies in points, sorted by κ."""
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for kd, lab in pairing.pairs:
        key = (kd["teacher"]["run_id"], kd["model"]["name"], kd["kd"]["tau"], kd["kd"]["alpha"],
               kd["subset"]["kappa"])
        groups[key].append((kd, lab))
    rows = []
    for (teacher, model, tau, alpha, kappa), pairs in sorted(groups.items(), key=lambda kv: kv[0][1:]):
        kd_acc = [100 * kd["final"]["test_acc"] for kd, _ in pairs]
        lab_acc = [100 * lab["final"]["test_acc"] for _, lab in pairs]
        pi, lo, hi = mean_ci([a - b for a, b in zip(kd_acc, lab_acc)])
        rows.append({
            "teacher": teacher, "model": model, "tau": tau, "alpha": alpha, "kappa": kappa,
            "n_train": pairs[0][0]["subset"]["size"], "pairs": len(pairs),
            "kd_acc": sum(kd_acc) / len(pairs), "labels_acc": sum(lab_acc) / len(pairs),
            "pi": pi, "pi_lo": lo, "pi_hi": hi,
            "teacher_acc": teacher_acc.get(teacher, float("nan")),
            "kd_agreement": _mean(kd["final"].get("teacher_agreement") for kd, _ in pairs),
            "labels_agreement": _mean(lab["final"].get("teacher_agreement") for _, lab in pairs),
        })
    return rows


def _mean(values) -> float:
    vals = [100 * v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")
