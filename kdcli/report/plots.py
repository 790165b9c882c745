"""PNG plots of a report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from kdcli.io.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _lines(rows: list[dict]) -> dict[str, list[dict]]:
    models = {r["model"] for r in rows}
    lines = defaultdict(list)
    for r in rows:
        label = r["arm"] if len(models) == 1 else f"{r['model']}: {r['arm']}"
        lines[label].append(r)
    return {k: sorted(v, key=lambda r: r["kappa"]) for k, v in lines.items()}


def pi_vs_kappa(rows: list[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = _lines(rows)
    bands = {label: [(r["kappa"], r["pi_lo"], r["pi_hi"]) for r in line if not math.isnan(r["pi_lo"])]
             for label, line in lines.items()}
    show_bands = sum(len(b) > 1 for b in bands.values()) <= 3  # more hide the lines (the CSV has them)
    for label, line in lines.items():
        k = [r["kappa"] for r in line]
        ax.plot(k, [r["pi"] for r in line], marker="o", label=label)
        band = bands[label]
        if len(band) > 1 and show_bands:
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], alpha=0.2)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("κ (student samples / teacher's n_T)")
    ax.set_ylabel(pi_label(rows[0]))
    ax.set_title("Performance increment vs κ (mean" + (", 95% CI band" if show_bands else "")
                 + " over paired seeds)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pi_label(row: dict) -> str:
    """What PI means for a report row's task (kdcli/task.py)."""
    if row["pi_method"] == "difference_points":
        name = "acc" if row["metric"] == "test_acc" else row["metric"]
        return f"PI = {name}(arm) − {name}(labels) (points)"
    return f"PI = relative reduction of {row['metric']} (%)"


def accuracy_vs_kappa(rows: list[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels_done = set()
    for label, line in _lines(rows).items():
        k = [r["kappa"] for r in line]
        ax.plot(k, [r["arm_metric"] for r in line], marker="o", label=label)
        base = (line[0]["model"], line[0]["teacher"])
        if base not in labels_done:
            labels_done.add(base)
            ax.plot(k, [r["labels_metric"] for r in line], marker="s", ls="--", color="gray",
                    label="labels" if len(labels_done) == 1 else None)
    for teacher in {r["teacher_metric"] for r in rows if not math.isnan(r["teacher_metric"])}:
        ax.axhline(teacher, color="black", ls=":", lw=1, label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("κ")
    ax.set_ylabel("test accuracy (%)" if rows[0]["metric"] == "test_acc" else rows[0]["metric"])
    ax.set_title(f"Student {rows[0]['metric']} vs κ")
    ax.legend(fontsize=8)
    return _save(fig, path)


def tau_kappa_heatmap(table: dict, path: Path) -> Path:
    """table: {"taus": [...], "kappas": [...], "pi": [[...]]} (NaN where missing)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(table["kappas"]), 1.0 + 0.5 * len(table["taus"])))
    values = table["pi"]
    finite = [abs(v) for row in values for v in row if not math.isnan(v)] or [1.0]
    lim = max(finite)
    im = ax.imshow(values, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(table["kappas"])), [f"{k:g}" for k in table["kappas"]])
    ax.set_yticks(range(len(table["taus"])), [f"{t:g}" for t in table["taus"]])
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("κ")
    ax.set_ylabel("τ")
    ax.set_title("PI (points) by τ × κ")
    fig.colorbar(im, ax=ax, label="PI")
    return _save(fig, path)


def fidelity_vs_pi(points: list[tuple[float, float, float]], path: Path) -> Path:
    """points: (Δagreement in points, PI in points, κ) per pair."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    sc = ax.scatter([p[0] for p in points], [p[1] for p in points], c=[math.log10(p[2]) for p in points],
                    cmap="viridis", s=18)
    fig.colorbar(sc, ax=ax, label="log10 κ")
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("agreement with teacher: KD − labels (points)")
    ax.set_ylabel("PI (points)")
    ax.set_title("Fidelity gain vs PI, per pair")
    return _save(fig, path)


def cka_vs_kappa(rows: list[dict], path: Path) -> Path:
    """rows: {"arm", "estimator", "kappa", "cka"} means."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = defaultdict(list)
    for r in rows:
        lines[f"{r['arm']} ({r['estimator']})"].append((r["kappa"], r["cka"]))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("κ")
    ax.set_ylabel("CKA with the teacher")
    ax.set_title("Feature alignment with the teacher vs κ")
    ax.legend(fontsize=8)
    return _save(fig, path)
