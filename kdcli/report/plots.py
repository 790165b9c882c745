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


def _label(row: dict, models: set, teachers: set = frozenset()) -> str:
    """A curve's name: its arm, prefixed by the model when several are plotted, followed by the
    teacher (id and primary metric) when several are."""
    name = row["arm"] if len(models) == 1 else f"{row['model']}: {row['arm']}"
    if len(teachers) > 1:
        metric = row.get("teacher_metric")
        shown = "" if metric is None or math.isnan(metric) else f" ({metric:.4g})"
        name += f", teacher {str(row.get('teacher'))[:6]}{shown}"
    return name


def _lines(rows: list[dict]) -> dict[str, list[dict]]:
    models = {r["model"] for r in rows}
    teachers = {r.get("teacher") for r in rows}
    lines = defaultdict(list)
    for r in rows:
        lines[_label(r, models, teachers)].append(r)
    return {k: sorted(v, key=lambda r: r["kappa"]) for k, v in lines.items()}


def is_lm(row: dict) -> bool:
    """A row of a sequence task (language model): kdcli.report.pi gives only those `ppl_reduction`."""
    return "ppl_reduction" in row


def _one_kind(rows: list[dict]) -> list[dict]:
    """LM and classification curves never share an axis (their PI are different quantities)."""
    if len({(is_lm(r), r["metric"], r["pi_method"]) for r in rows}) > 1:
        raise ValueError("rows of different tasks (metric or PI method) on one plot; plot each kind apart")
    return rows


def _curves(ax, rows: list[dict], key: str, colors: dict[str, str] | None = None,
            lone_bars: bool = False) -> bool:
    """One line per arm of `key` against κ, with its 95% CI band (`key_lo`, `key_hi`) unless
    there are too many bands to read; whether bands were drawn. colors: per line label;
    lone_bars: an error bar for a line of one point (it has no band)."""
    lines = _lines(rows)
    bands = {label: [(r["kappa"], r[f"{key}_lo"], r[f"{key}_hi"]) for r in line
                     if r[f"{key}_lo"] is not None and not math.isnan(r[f"{key}_lo"])]
             for label, line in lines.items()}
    show_bands = sum(len(b) > 1 for b in bands.values()) <= 3  # more hide the lines (the CSV has them)
    for label, line in lines.items():
        k = [r["kappa"] for r in line]
        y = [math.nan if r[key] is None else r[key] for r in line]
        # a label missing from `colors` (a panel that lacks some model's rows): matplotlib's cycle
        color = {"color": colors[label]} if colors and label in colors else {}
        (drawn,) = ax.plot(k, y, marker="o", label=label, **color)
        band = bands[label]
        if len(band) > 1 and show_bands:
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], alpha=0.2,
                            **color)
        elif len(band) == 1 and len(line) == 1 and lone_bars:
            ax.errorbar(k, y, yerr=[[y[0] - band[0][1]], [band[0][2] - y[0]]], capsize=4,
                        color=drawn.get_color())
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    if lone_bars:
        _one_kappa_axis(ax, rows)
    return show_bands


def _arm_and_twins(ax, lines: dict[str, list[dict]], key: str, cycle: list[str], twins: str) -> None:
    """Each line's arm_KEY solid with circles and labels_KEY dashed with squares, one colour per line."""
    for i, (label, line) in enumerate(lines.items()):
        k = [r["kappa"] for r in line]
        color = cycle[i % len(cycle)]
        ax.plot(k, [r[f"arm_{key}"] for r in line], marker="o", color=color, label=label)
        ax.plot(k, [r[f"labels_{key}"] for r in line], marker="s", linestyle="--", color=color,
                label=f"{label}: {twins}")


def _one_kappa_axis(ax, rows: list[dict]) -> None:
    """Where every row has the same κ: a decade around it, not a degenerate log axis."""
    kappas = {r["kappa"] for r in rows}
    if len(kappas) == 1:
        from matplotlib.ticker import NullFormatter

        (k,) = kappas
        ax.set_xlim(k / 3, k * 3)
        ax.set_xticks([k], [f"{k:g}"])
        ax.xaxis.set_minor_formatter(NullFormatter())


def pi_vs_kappa(rows: list[dict], path: Path, kappa_star: list[dict] = ()) -> Path:
    """PI vs κ per arm; with `kappa_star` rows (kdcli.report.crossover), each arm's crossover κ*
    as a cross on the zero line with its 95% interval (a bound off the grid drawn to its edge)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    show_bands = _curves(ax, _one_kind(rows), "pi", lone_bars=is_lm(rows[0]))
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    models = {r["model"] for r in rows}
    teachers = {r.get("teacher") for r in rows}
    for k in kappa_star:
        if k["kappa_star"] is None:
            continue
        label = _label(k, models, teachers)
        grid = [float(g) for g in k["kappas"].split()]
        edge = {"below the grid": grid[0], "not reached": grid[-1]}  # a bound off the grid: its edge
        lo = k["kappa_star_lo"] if k["lo_status"] == "crossed" else edge.get(k["lo_status"])
        hi = k["kappa_star_hi"] if k["hi_status"] == "crossed" else edge.get(k["hi_status"])
        # the point uses every pair, the interval the seeds at every κ: it may lie outside
        xerr = [[max(0.0, k["kappa_star"] - lo)], [max(0.0, hi - k["kappa_star"])]] if k["lo_status"] else None
        ax.errorbar([k["kappa_star"]], [0], xerr=xerr, marker="X", markersize=9, capsize=4,
                    color=colors.get(label, "black"), linestyle="none")
    ax.set_xlabel("κ (student samples / teacher's n_T)")
    ax.set_ylabel(pi_label(rows[0]))
    what = "(mean" + ((", 95% CI" if is_lm(rows[0]) else ", 95% CI band") if show_bands else "") + " over paired seeds)"
    star = "\n× crossover κ* with its 95% interval" if any(k["kappa_star"] is not None for k in kappa_star) else ""
    ax.set_title(f"Language models: performance increment vs κ\n{what}{star}" if is_lm(rows[0])
                 else f"Performance increment vs κ {what}{star}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def lm_metrics_vs_kappa(rows: list[dict], path: Path) -> Path:
    """Language-model rows: perplexity reduction, top-1 token-accuracy change and (where every
    pair has one) the out-of-distribution PI vs κ, one panel each, with 95% CI bands."""
    plt = _pyplot()
    panels = [("ppl_reduction", "perplexity reduction (%)\n100·(1 − ppl(KD)/ppl(labels))"),
              ("acc_change", "Δ top-1 token accuracy (points)\nKD − labels")]
    if any(r.get("ood_pi") is not None for r in _one_kind(rows)):
        panels.append(("ood_pi", "PI on OOD text: relative\ntest CE reduction (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False, sharex=True)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {label: cycle[i % len(cycle)] for i, label in enumerate(_lines(rows))}  # one per arm, every panel
    for ax, (key, label) in zip(axes[0], panels):
        show_bands = _curves(ax, [r for r in rows if r.get(key) is not None], key, colors, lone_bars=True)
        ax.set_xlabel("κ (student samples / teacher's n_T)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Language models vs κ (mean" + (", 95% CI" if show_bands else "")
                 + " over paired seeds)")
    fig.tight_layout()
    return _save(fig, path)


def pi_label(row: dict) -> str:
    """What PI means for a report row's task (kdcli/task.py)."""
    if row["pi_method"] == "difference_points":
        name = "acc" if row["metric"] == "test_acc" else row["metric"]
        return f"PI = {name}(arm) − {name}(labels) (points)"
    if row["metric"] == "test_loss":
        return "PI: relative test CE reduction (%)"
    return f"PI = relative reduction of {row['metric']} (%)"


def pi_unit(row: dict) -> str:
    """PI's unit, short, for table and plot titles."""
    if row["pi_method"] == "difference_points":
        return "points"
    return "rel. CE reduction %" if row["metric"] == "test_loss" else f"rel. {row['metric']} reduction %"


def accuracy_vs_kappa(rows: list[dict], path: Path) -> Path:
    """The primary metric of the arms and their label twins (and the teacher's) vs κ."""
    _one_kind(rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, line in _lines(rows).items():
        ax.plot([r["kappa"] for r in line], [r["arm_metric"] for r in line], marker="o", label=label)
    # one label-trained line per student model (and teacher), over every κ it has a pair at
    twins: dict[tuple, dict[float, float]] = {}
    for r in rows:
        twins.setdefault((r["model"], r["teacher"]), {})[r["kappa"]] = r["labels_metric"]
    drawn, named = set(), set()  # label twins of several teachers are often the same runs' metrics
    models = {model for model, _ in twins}
    for i, ((model, _), by_kappa) in enumerate(sorted(twins.items())):
        k = sorted(by_kappa)
        if (model, tuple(by_kappa[x] for x in k)) in drawn:
            continue
        drawn.add((model, tuple(by_kappa[x] for x in k)))
        label = "labels" if len(models) == 1 else f"{model}: labels"
        ax.plot(k, [by_kappa[x] for x in k], marker="s", ls="--", color="gray", alpha=1 - 0.4 * (i % 2),
                label=label if label not in named else "_nolegend_")
        named.add(label)
    teachers = sorted({r["teacher_metric"] for r in rows if not math.isnan(r["teacher_metric"])})
    for i, teacher in enumerate(teachers):
        ax.axhline(teacher, color="black", ls=":", lw=1,
                   label=("teacher" if len(teachers) == 1 else "teachers") if i == 0 else "_nolegend_")
    ax.set_xscale("log")
    ax.set_xlabel("κ")
    metric = rows[0]["metric"]
    if is_lm(rows[0]):
        _one_kappa_axis(ax, rows)
    if is_lm(rows[0]) and metric == "test_loss":
        ax.set_ylabel("test CE (nats / token)")
        ax.set_title("Language models: student test CE vs κ (lower is better)")
    else:
        ax.set_ylabel("test accuracy (%)" if metric == "test_acc" else metric)
        ax.set_title(f"Student {metric} vs κ")
    ax.legend(fontsize=8)
    return _save(fig, path)


def tau_kappa_heatmap(table: dict, path: Path, unit: str = "points") -> Path:
    """table: {"taus": [...], "kappas": [...], "pi": [[...]]} (NaN where missing); unit: PI's
    (pi_unit)."""
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
    ax.set_title(f"PI ({unit}) by τ × κ")
    fig.colorbar(im, ax=ax, label="PI" if unit == "points" else f"PI ({unit})")
    return _save(fig, path)


def fidelity_vs_pi(points: list[tuple[float, float, float]], path: Path, pi_name: str = "PI (points)",
                   lm: bool = False) -> Path:
    """points: (Δagreement in points, PI, κ) per pair, all of one task kind; pi_name: the y label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    sc = ax.scatter([p[0] for p in points], [p[1] for p in points], c=[math.log10(p[2]) for p in points],
                    cmap="viridis", s=18)
    fig.colorbar(sc, ax=ax, label="log10 κ")
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(("top-1 token agreement" if lm else "agreement") + " with teacher: KD − labels (points)")
    ax.set_ylabel(pi_name)
    ax.set_title(("Language models: f" if lm else "F") + "idelity gain vs PI, per pair")
    return _save(fig, path)


def _cka_curves(ax, rows: list[dict]) -> None:
    """Mean CKA with the teacher vs κ, one curve per arm and estimator."""
    lines = defaultdict(list)
    for r in rows:
        lines[f"{r['arm']} ({r['estimator']})"].append((r["kappa"], r["cka"]))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)


def cka_vs_kappa(rows: list[dict], path: Path, lm: bool = False) -> Path:
    """rows: {"arm", "estimator", "kappa", "cka"} means, all of one task kind."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _cka_curves(ax, rows)
    ax.set_xscale("log")
    ax.set_xlabel("κ")
    ax.set_ylabel("CKA with the teacher")
    ax.set_title(("Language models: f" if lm else "F") + "eature alignment with the teacher vs κ")
    ax.legend(fontsize=8)
    return _save(fig, path)


def bias_variance_vs_kappa(rows: list[dict], path: Path, lm: bool = False) -> Path:
    """Bias-variance rows (kdcli.report.variance) vs κ: the cross-entropy bias and variance
    terms, the 0-1 bias and the seeds' disagreement; per arm a solid line, its label-trained
    twins dashed in the same colour."""
    plt = _pyplot()
    err = "token " if lm else ""
    panels = [("ce_bias", "CE bias term (nats)\n−log p̄(y), p̄: normalised geometric mean"),
              ("ce_variance", "CE variance term (nats)\nmean KL(p̄ ‖ p_seed)"),
              ("err_bias", f"0-1 {err}bias (%)\nmajority prediction wrong"),
              ("disagreement", "disagreement (%)\nseed pairs with different top-1")]
    fig, axes = plt.subplots(2, 2, figsize=(9.6, 7.2), sharex=True)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = _lines(rows)
    for ax, (term, ylabel) in zip(axes.flat, panels):
        _arm_and_twins(ax, lines, term, cycle, "its label twins")
        ax.set_xscale("log")
        ax.set_ylabel(ylabel)
        _one_kappa_axis(ax, rows)
    for ax in axes[1]:
        ax.set_xlabel("κ (student samples / teacher's n_T)")
    axes[0][0].legend(fontsize=7)
    seeds = sorted({r["n_seeds"] for r in rows})
    fig.suptitle(("Language models: " if lm else "") + "bias and variance across seeds vs κ "
                 f"({'/'.join(map(str, seeds))} seeds; solid: arm, dashed: labels)")
    fig.tight_layout()
    return _save(fig, path)


COLLAPSE_PANELS = (("nc1", "NC1 = tr(Σ_W Σ_B⁺)/C", True), ("nc2_etf", "NC2: distance to the simplex ETF", False),
                   ("nc3", "NC3: ‖W/‖W‖ − M/‖M‖‖²", False), ("nc4", "NC4: NCC ≠ network (share)", False))


def collapse_vs_kappa(rows: list[dict], path: Path, cka_rows: list[dict] = ()) -> Path:
    """Collapse rows (kdcli.report.collapse) vs κ: NC1–NC4, one colour per arm and split, the
    arm solid and its label twins dashed, the teacher's value as a grey line when there is one
    teacher; with CKA rows, the CKA with the teacher beside them."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 5 if cka_rows else 4, figsize=(19 if cka_rows else 15.5, 3.9))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines: dict[str, list[dict]] = {}
    for label, line in _lines(rows).items():
        for split in dict.fromkeys(r["split"] for r in line):
            lines[f"{label} ({split})"] = [r for r in line if r["split"] == split]
    for ax, (key, title, log) in zip(axes, COLLAPSE_PANELS):
        _arm_and_twins(ax, lines, key, cycle, "label twins")
        if len({r["teacher"] for r in rows}) == 1:  # one teacher: its own value, where measured
            for split, style in zip(dict.fromkeys(r["split"] for r in rows), (":", "-.", (0, (1, 3)))):
                value = next(r[f"teacher_{key}"] for r in rows if r["split"] == split)
                if not math.isnan(value):
                    ax.axhline(value, color="gray", linestyle=style, linewidth=1, label=f"teacher ({split})")
        ax.set_xscale("log")
        if log and any(r[f"{side}_{key}"] > 0 for r in rows for side in ("arm", "labels")):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("κ")
        _one_kappa_axis(ax, rows)
    if cka_rows:
        ax = axes[-1]
        _cka_curves(ax, cka_rows)
        ax.set_xscale("log")
        ax.set_title("CKA with the teacher", fontsize=10)
        ax.set_xlabel("κ")
        ax.legend(fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("Neural collapse of the penultimate features vs κ (0 = collapsed; solid: arm, dashed: its "
                 "label twins; means over paired seeds)")
    fig.tight_layout()
    return _save(fig, path)


def kappa_star_lines(rows: list[dict], against: str) -> dict[str, list[dict]]:
    """κ* rows as lines against the teacher's accuracy (one line per arm and student model, where
    it has two teachers or more) or the student's size (per arm and teacher, where it has two
    student models or more, one line per model family: `cnn1d channels=8` and `cnn1d
    channels=32` are joined, a `vit` beside them is a point of its own); {} when there is
    nothing to draw."""
    x = "teacher_metric" if against == "teacher" else "student_parameters"
    panels: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r[x] is not None and not math.isnan(r[x]):
            panels[(r["arm"], r["model"]) if against == "teacher" else (r["arm"], r["teacher"])].append(r)
    kept: dict[str, list[dict]] = {}
    for (arm, other), panel in panels.items():
        if len({r["teacher" if against == "teacher" else "model"] for r in panel}) < 2:
            continue
        if against == "teacher":
            kept[f"{arm}, student {other}"] = sorted(panel, key=lambda r: r[x])
            continue
        for family in dict.fromkeys(r["model"].split()[0] for r in panel):
            line = [r for r in panel if r["model"].split()[0] == family]
            kept[f"{arm}, {family}, teacher {other[:8]}"] = sorted(line, key=lambda r: r[x])
    return kept


def kappa_star_vs(rows: list[dict], against: str, path: Path, lm: bool = False) -> Path:
    """κ* (with its 95% interval; 'not reached' drawn as a triangle above the grid, 'below the
    grid' under it) and the peak PI (with its interval) against the teacher's accuracy or the
    student's parameter count."""
    plt = _pyplot()
    x = "teacher_metric" if against == "teacher" else "student_parameters"
    xlabel = ("teacher test CE (nats)" if lm else "teacher test accuracy (%)") if against == "teacher" \
        else "student parameters"
    lines = kappa_star_lines(rows, against)
    grid = sorted({float(k) for r in rows for k in r["kappas"].split()})
    top, bottom = grid[-1] * 1.6, grid[0] / 1.6
    fig, (ax_k, ax_p) = plt.subplots(1, 2, figsize=(12, 4.4))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, line) in enumerate(lines.items()):
        color = cycle[i % len(cycle)]
        xs = [r[x] for r in line]
        edge = {"crossed": None, "not reached": top, "below the grid": bottom}
        ys = [r["kappa_star"] if r["status"] == "crossed" else edge[r["status"]] for r in line]
        ax_k.plot(xs, ys, color=color, label=label, linestyle=":")
        for xi, yi, r in zip(xs, ys, line):
            lo = r["kappa_star_lo"] if r["lo_status"] == "crossed" else edge.get(r["lo_status"]) or yi
            hi = r["kappa_star_hi"] if r["hi_status"] == "crossed" else edge.get(r["hi_status"]) or yi
            marker = "o" if r["status"] == "crossed" else ("^" if r["status"] == "not reached" else "v")
            ax_k.errorbar([xi], [yi], yerr=[[max(0.0, yi - lo)], [max(0.0, hi - yi)]], color=color,
                          marker=marker, capsize=3, fillstyle="full" if r["status"] == "crossed" else "none")
            if against == "student":
                ax_k.annotate(r["model"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        peaks = [r["peak_pi"] for r in line]
        err = [[max(0.0, r["peak_pi"] - r["peak_pi_lo"]) if not math.isnan(r["peak_pi_lo"]) else 0.0 for r in line],
               [max(0.0, r["peak_pi_hi"] - r["peak_pi"]) if not math.isnan(r["peak_pi_hi"]) else 0.0 for r in line]]
        ax_p.errorbar(xs, peaks, yerr=err, color=color, marker="o", capsize=3, label=label)
    ax_k.axhline(top, color="gray", linewidth=0.6, linestyle="--")
    ax_k.axhline(bottom, color="gray", linewidth=0.6, linestyle="--")
    ax_k.set_yscale("log")
    ax_k.set_ylabel("crossover κ* (95% CI)\n▲ not reached on the grid, ▼ below it")
    ax_p.axhline(0, color="gray", linewidth=0.6)
    ax_p.set_ylabel("peak PI over the κ grid (95% CI)")
    for ax in (ax_k, ax_p):
        ax.set_xlabel(xlabel)
        if against == "student":
            ax.set_xscale("log")
    ax_k.legend(fontsize=7)
    fig.suptitle(f"κ* and peak PI against the {'teacher' if against == 'teacher' else 'student'}")
    fig.tight_layout()
    return _save(fig, path)
