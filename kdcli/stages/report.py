"""`report`: the paper's tables and plots from a tree of run dirs.

Reads only run.json files (through kdcli.io.runs, the one reader of run dirs) and CKA
and collapse Parquet files, so it stays fast on thousands of runs. Each run's task (run.json `task`)
says which metric PI is computed from and how. Damaged runs, CKA and collapse files are listed
with the reason, never skipped silently. Writes CSV, Markdown and JSON tables and PNG
plots to --out.

Classification and language-model (sequence task) runs never share a row, a table or a
plot: each kind gets its own (KindReport); the language models' files are named with
`_lm` (pi_vs_kappa_lm.csv, pi_vs_kappa_lm.png, ...), the classification files keep their
names.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import math
import os
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kdcli.errors import ArtifactError, ConfigError
from kdcli.io.atomic import write_bytes, write_json
from kdcli.io.runs import Found, scan
from kdcli.report.collapse import collapse_rows
from kdcli.report.crossover import kappa_star_rows
from kdcli.report.pairs import Pair, Pairing, pair_runs
from kdcli.report.pi import (
    agreement_gain,
    fidelity_correlation,
    group_pairs,
    pair_pi,
    pi_rows,
    primary,
    task_kind,
    varying_fields,
)
from kdcli.report.plots import pi_label, pi_unit
from kdcli.report.variance import variance_rows

KINDS = ("classification", "sequence")  # the order their tables come in


@dataclass(frozen=True)
class ReportConfig:
    root: str
    out: str | None = None
    group_by: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()  # KEY=VALUE on run config fields (or `stage`, `dataset`)
    bootstrap: int = 0  # >0: bootstrap CI with this many resamples instead of the t-interval
    plots: bool = True
    verify: bool = False  # sha256 of every artifact (default: presence and size only)

    def __post_init__(self):
        if self.bootstrap < 0 or self.bootstrap == 1:
            raise ConfigError(f"--bootstrap {self.bootstrap}: expected 0 (t-interval) or at least 2 resamples")


@dataclass
class KindReport:
    """The tables of one task kind: classification, or sequence (language models)."""

    kind: str
    group_by: tuple[str, ...]  # the row-splitting fields: asked for, plus settings that vary
    rows: list[dict]
    tau_tables: list[dict]
    ls_table: list[dict]
    fidelity: dict
    cka_rows: list[dict]
    pairs: list[Pair]
    variance_rows: list[dict] = field(default_factory=list)  # kdcli.report.variance
    kappa_star_rows: list[dict] = field(default_factory=list)  # kdcli.report.crossover
    variance_skipped: list[str] = field(default_factory=list)  # groups without a decomposition, and why
    collapse_rows: list[dict] = field(default_factory=list)  # kdcli.report.collapse

    @property
    def lm(self) -> bool:
        return self.kind == "sequence"

    @property
    def suffix(self) -> str:
        """Of its files' names: classification keeps the plain names."""
        return "_lm" if self.lm else ""

    @property
    def unit(self) -> str:
        """PI's unit: 'points', 'rel. CE reduction %'."""
        return pi_unit(self.rows[0]) if self.rows else "points"


@dataclass
class ReportResult:
    rows: list[dict]  # every kind's, classification first
    group_by: tuple[str, ...]  # every kind's row-splitting fields
    kinds: list[KindReport]  # one per task kind that has pairs, in KINDS order
    scan: Found
    pairing: Pairing
    damaged_files: list[tuple[str, str]] = field(default_factory=list)  # CKA and collapse files: (path, why)
    written: list[Path] = field(default_factory=list)

    # Every kind's tables together (each table, and each row of one, is of one kind)
    @property
    def tau_tables(self) -> list[dict]:
        return [t for k in self.kinds for t in k.tau_tables]

    @property
    def ls_table(self) -> list[dict]:
        return [r for k in self.kinds for r in k.ls_table]


def _matches(run: dict, filters: list[tuple[str, str]]) -> bool:
    """Runs that lack a filtered field (label students have no τ) are kept as baselines."""
    for key, value in filters:
        if key == "stage":
            have = run.get("stage")
        elif key == "dataset":
            have = run["dataset"]["name"]
        else:
            have = run["config"].get(key.replace("-", "_"))
        if have is not None and not _same(have, value):
            return False
    return True


def _same(have, text: str) -> bool:
    try:
        return float(have) == float(text)
    except (TypeError, ValueError):
        return str(have) == text


def _panel(row: dict, group_by: tuple[str, ...]) -> tuple:
    """What separates one τ × κ (or control) table from another."""
    return (row["model"], row["teacher"], *(row[g] for g in group_by))


def tau_tables(rows: list[dict], group_by: tuple[str, ...]) -> list[dict]:
    """PI by τ × κ for the pure-KD arms (α = 1, no smoothing, offline), one table per
    model / teacher / setting that has at least two τ."""
    kd = [r for r in rows if r["tau"] is not None and r["arm"] == f"kd τ={r['tau']:g} α=1"]
    tables = []
    for panel in sorted({_panel(r, group_by) for r in kd}, key=str):
        members = [r for r in kd if _panel(r, group_by) == panel]
        taus = sorted({r["tau"] for r in members})
        if len(taus) < 2:
            continue
        kappas = sorted({r["kappa"] for r in members})
        cell = {(r["tau"], r["kappa"]): r["pi"] for r in members}
        tables.append({"panel": dict(zip(("model", "teacher", *group_by), panel)), "taus": taus,
                       "kappas": kappas, "pi": [[cell.get((t, k), math.nan) for k in kappas] for t in taus]})
    return tables


def ls_table(rows: list[dict], group_by: tuple[str, ...]) -> list[dict]:
    """Per panel and κ: PI of every arm, label-smoothing arms next to KD (NaN where not run)."""
    if not any(r["arm"].startswith("ls") for r in rows):
        return []
    arms = list(dict.fromkeys(r["arm"] for r in rows))  # rows come in arm order
    by_point: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        by_point[(*_panel(r, group_by), r["kappa"])][r["arm"]] = r["pi"]
    names = ("model", "teacher", *group_by, "kappa")
    return [{**dict(zip(names, point)), **{a: cols.get(a, math.nan) for a in arms}}
            for point, cols in sorted(by_point.items(), key=lambda kv: str(kv[0][:-1]) + f"{kv[0][-1]:012.6f}")]


def read_files(paths: list[str], reader, what: str) -> tuple[list[tuple[list[dict], dict]], list[tuple[str, str]]]:
    """(rows, metadata) of every file `reader` (read_cka, read_collapse) can read; and those it
    could not, with the reason."""
    files, damaged = [], []
    for path in paths:
        try:
            files.append(reader(path, flag=what))
        except ArtifactError as exc:
            damaged.append((path, str(exc)))
    return files, damaged


def cka_rows(files: list[tuple[list[dict], dict]], runs: dict[str, dict], pairs: list[Pair]) -> list[dict]:
    """Mean CKA with the teacher per (arm, estimator, κ), from the CKA files (read_files)
    linking teacher and a student of `pairs`."""
    labels_ids = {p.labels["run_id"] for p in pairs}
    arm_of = {p.run["run_id"]: p.arm for p in pairs} | {i: "labels" for i in labels_ids}
    values: dict[tuple, list[float]] = defaultdict(list)
    for table, meta in files:
        ids = [meta.get("run_a_id"), meta.get("run_b_id")]
        students = [i for i in ids if i in arm_of]
        teachers = [i for i in ids if i in runs and runs[i].get("stage") == "train-teacher"]
        if len(students) != 1 or len(teachers) != 1:
            continue
        student = runs[students[0]]
        for row in table:
            values[(arm_of[students[0]], row["estimator"], student["subset"]["kappa"])].append(row["value"])
    return [{"arm": a, "estimator": e, "kappa": k, "cka": sum(v) / len(v), "n": len(v)}
            for (a, e, k), v in sorted(values.items())]


def run(cfg: ReportConfig) -> ReportResult:
    if not Path(cfg.root).is_dir():
        raise ConfigError(f"ROOT {cfg.root}: no such directory")
    filters = []
    for item in cfg.filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--filter {item!r}: expected KEY=VALUE (e.g. model=cnn1d, tau=4)")
        filters.append((key, value))
    found = scan(cfg.root, verify="hash" if cfg.verify else "size")
    known = {"stage", "dataset"} | {k for r in found.runs for k in r["config"]}
    for key, _ in filters:
        if key.replace("-", "_") not in known:
            raise ConfigError(f"--filter {key}: no run under {cfg.root} has that field; "
                              "use a config field such as model, kappa, tau, lr")
    selected = [r for r in found.runs if _matches(r, filters) or r.get("stage") == "train-teacher"]
    pairing = pair_runs(selected)
    teacher_metric = {r["run_id"]: primary(r) for r in found.runs if r.get("stage") == "train-teacher"}
    by_id = {r["run_id"]: r for r in found.runs}
    from kdcli.io.cka import read_cka
    from kdcli.io.collapse import read_collapse

    cka_files, damaged_cka = read_files(found.cka_files, read_cka, "CKA file")
    nc_files, damaged_nc = read_files(sorted(found.collapse_files), read_collapse, "collapse file")
    by_kind: dict[str, list[Pair]] = defaultdict(list)
    for p in pairing.pairs:
        by_kind[task_kind(p)].append(p)
    kinds = []
    for kind in KINDS:
        pairs = by_kind.get(kind)
        if not pairs:
            continue
        group_by = tuple(dict.fromkeys([*cfg.group_by, *varying_fields(pairs)]))
        rows = pi_rows(pairs, teacher_metric, group_by, cfg.bootstrap)
        groups = group_pairs(pairs, group_by)
        variance, skipped = variance_rows(groups, group_by)
        stars = with_peaks(kappa_star_rows(groups, group_by, cfg.bootstrap or 2000), rows, groups, group_by)
        kinds.append(KindReport(kind, group_by, rows, tau_tables(rows, group_by), ls_table(rows, group_by),
                                fidelity_correlation(pairs), cka_rows(cka_files, by_id, pairs), pairs,
                                variance, stars, skipped, collapse_rows(nc_files, groups, group_by)))
    result = ReportResult([r for k in kinds for r in k.rows],
                          tuple(dict.fromkeys(g for k in kinds for g in k.group_by)) or tuple(cfg.group_by),
                          kinds, found, pairing, damaged_cka + damaged_nc)
    if cfg.out is not None:
        result.written = write_outputs(result, Path(cfg.out), cfg.plots)
    return result


def fmt(v, spec: str = ".2f") -> str:
    """A table cell: '—' for a missing value."""
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def ci_cell(lo, hi, spec: str = "+.2f") -> str:
    return "—" if lo is None or math.isnan(lo) else f"[{lo:{spec}}, {hi:{spec}}]"


def _with_ci(row: dict, key: str) -> str:
    """Mean and 95% CI in one cell, compactly: '+4.12 ±1.03' (t-interval: its half-width) or
    '+4.12 [+3.10,+5.02]' (bootstrap)."""
    if row.get(key) is None or math.isnan(row[key]):
        return "—"
    lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
    if lo is None or math.isnan(lo):
        return fmt(row[key], "+.2f")
    if row["ci"] == "t":
        return f"{row[key]:+.2f} ±{(hi - lo) / 2:.2f}"
    return f"{row[key]:+.2f} [{lo:+.2f},{hi:+.2f}]"


def ci_note(ci: str) -> str:
    """What the compact CI of a language-model table means."""
    if ci == "t":
        return "mean ± half-width of the 95% t-interval over paired seeds"
    return "mean [95% bootstrap interval] over paired seeds"


def pi_table(part: KindReport, ci_name: str) -> tuple[list[str], list[list[str]]]:
    """The PI-vs-κ table of one task kind as the terminal (and, for language models, Markdown)
    shows it: column names and the cells of each row. Language-model cells show each mean with
    its CI (ci_note)."""
    rows, group_by = part.rows, part.group_by
    if not part.lm:
        metric = rows[0]["metric"].removeprefix("test_") if rows else "acc"
        cols = ["arm", "model", *group_by, "κ", "n", "pairs", f"arm {metric}", f"labels {metric}", "PI",
                ci_name, f"teacher {metric}", "agree arm/labels", "KL arm/labels"]
        return cols, [[r["arm"], r["model"], *(str(r[g]) for g in group_by), f"{r['kappa']:g}",
                       str(r["n_train"]), str(r["pairs"]), fmt(r["arm_metric"]), fmt(r["labels_metric"]),
                       fmt(r["pi"], "+.2f"), ci_cell(r["pi_lo"], r["pi_hi"]), fmt(r["teacher_metric"]),
                       f"{fmt(r['arm_agreement'], '.1f')}/{fmt(r['labels_agreement'], '.1f')}",
                       f"{fmt(r['arm_kl'], '.3f')}/{fmt(r['labels_kl'], '.3f')}"] for r in rows]
    metric = rows[0]["metric"]
    short = "CE" if metric == "test_loss" else metric.removeprefix("test_")
    ood = any(r.get("ood_pi") is not None for r in rows)
    cols = ["arm", "model", *group_by, "κ", "n", "pairs", f"{short} arm/labels", f"PI ({part.unit})",
            "ppl red. %", "Δtop-1 (pts)", "bpb arm/labels", *(["OOD PI %"] if ood else []), f"teacher {short}",
            "agree arm/labels", "KL arm/labels"]
    cells = [[r["arm"], r["model"], *(str(r[g]) for g in group_by), f"{r['kappa']:g}", str(r["n_train"]),
              str(r["pairs"]), f"{fmt(r['arm_metric'], '.3f')}/{fmt(r['labels_metric'], '.3f')}",
              _with_ci(r, "pi"), _with_ci(r, "ppl_reduction"), _with_ci(r, "acc_change"),
              f"{fmt(r['arm_bpb'], '.3f')}/{fmt(r['labels_bpb'], '.3f')}",
              *([_with_ci(r, "ood_pi")] if ood else []), fmt(r["teacher_metric"], ".3f"),
              f"{fmt(r['arm_agreement'], '.1f')}/{fmt(r['labels_agreement'], '.1f')}",
              f"{fmt(r['arm_kl'], '.3f')}/{fmt(r['labels_kl'], '.3f')}"] for r in rows]
    return cols, cells


def variance_tables(part: KindReport) -> list[tuple[str, list[str], list[list[str]]]]:
    """The bias-variance tables of one task kind (kdcli.report.variance) as the terminal and
    report.md show them, cross-entropy then 0-1 loss: (title, columns, cells); each cell
    arm/labels, Δ = arm − labels with its 95% interval over test rows."""
    rows, group_by = part.variance_rows, part.group_by
    err = "token error" if part.lm else "error"

    def both(r, term, spec):
        return f"{fmt(r[f'arm_{term}'], spec)}/{fmt(r[f'labels_{term}'], spec)}"

    def delta(r, term, spec):
        return f"{r[f'd_{term}']:+{spec}} [{r[f'd_{term}_lo']:+{spec}}, {r[f'd_{term}_hi']:+{spec}}]"

    def head(r):
        return [r["arm"], r["model"], *(str(r[g]) for g in group_by), f"{r['kappa']:g}", str(r["n_seeds"])]
    key = ["arm", "model", *group_by, "κ", "seeds"]
    return [
        ("cross-entropy (nats)", key + ["CE arm/labels", "bias arm/labels", "variance arm/labels",
                                        "Δ variance [95% CI]", "Δ bias [95% CI]"],
         [head(r) + [both(r, "ce", ".3f"), both(r, "ce_bias", ".3f"), both(r, "ce_variance", ".3f"),
                     delta(r, "ce_variance", ".3f"), delta(r, "ce_bias", ".3f")] for r in rows]),
        (f"0-1 loss ({err}, %)", key + [f"{err} arm/labels", "bias arm/labels", "net var. arm/labels",
                                        "Δ bias [95% CI]", "Δ net var. [95% CI]", "disagree arm/labels"],
         [head(r) + [both(r, "err", ".1f"), both(r, "err_bias", ".1f"), both(r, "err_net_variance", ".1f"),
                     delta(r, "err_bias", ".1f"), delta(r, "err_net_variance", ".1f"),
                     both(r, "disagreement", ".1f")] for r in rows]),
    ]


VARIANCE_LEGEND = ("Over seeds, per test row, then averaged: CE = CE bias + CE variance (Heskes 1998: loss of the "
                   "normalised geometric mean of the seeds' predictions + mean KL from it to each seed's, nats); "
                   "error = 0-1 bias + net variance (Domingos 2000: the seeds' majority prediction wrong; net "
                   "variance = unbiased − c·biased variance); disagree = seed pairs whose top-1 predictions differ. "
                   "Cells arm/labels; Δ = arm − labels [95% bootstrap interval over test rows, seeds fixed]")


def kappa_star_table(part: KindReport) -> tuple[list[str], list[list[str]]]:
    """The crossover κ* per arm (kdcli.report.crossover): point and 95% bootstrap interval over
    paired seeds, and the share of resamples whose PI never crosses on the grid."""
    from kdcli.report.crossover import describe

    metric = "teacher CE" if part.lm else "teacher acc"
    cols = ["arm", "model", *part.group_by, "κ grid", "seeds", "κ* [95% CI]", "not reached %", "below grid %",
            metric, "student params", "peak PI [95% CI] at κ"]
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    return cols, [[r["arm"], r["model"], *(str(r[g]) for g in part.group_by), r["kappas"], str(r["n_seeds"]),
                   describe(r), pct(r["share_not_reached"]), pct(r["share_below"]),
                   fmt(r["teacher_metric"], ".3f" if part.lm else ".2f"), fmt(r["student_parameters"], ","),
                   f"{fmt(r['peak_pi'], '+.2f')} {ci_cell(r['peak_pi_lo'], r['peak_pi_hi'])} at {fmt(r['peak_kappa'], 'g')}"]
                  for r in part.kappa_star_rows]


def with_peaks(stars: list[dict], rows: list[dict], groups, group_by: tuple[str, ...]) -> list[dict]:
    """κ* rows with what the open questions plot them against: the teacher's accuracy
    (`teacher_metric`), the student's parameter count, and the arm's peak PI over the κ grid
    (the PI row with the largest mean, its interval and κ)."""
    params = {key[:-2]: members[0].run["model"].get("parameters") for key, members in groups}
    out = []
    for star in stars:
        panel = (star["arm"], star["model"], star["teacher"], *(star[g] for g in group_by))
        mine = [r for r in rows if (r["arm"], r["model"], r["teacher"], *(r[g] for g in group_by)) == panel
                and not math.isnan(r["pi"])]
        peak = max(mine, key=lambda r: r["pi"]) if mine else None
        out.append({**star, "teacher_metric": mine[0]["teacher_metric"] if mine else math.nan,
                    "student_parameters": params.get(panel),
                    "peak_pi": peak["pi"] if peak else math.nan, "peak_pi_lo": peak["pi_lo"] if peak else math.nan,
                    "peak_pi_hi": peak["pi_hi"] if peak else math.nan, "peak_kappa": peak["kappa"] if peak else None})
    return out


def collapse_table(part: KindReport, split: str) -> tuple[list[str], list[list[str]]]:
    """Neural collapse vs κ on one split: per NC measure arm/labels and Δ = arm − labels with its
    95% t-interval over pairs (the teacher's values are in collapse.csv and the plot)."""
    names = (("nc1", "NC1", ".3g"), ("nc2_etf", "NC2 ETF", ".3f"), ("nc3", "NC3", ".3f"), ("nc4", "NC4", ".3f"))
    cols = ["arm", "model", *part.group_by, "κ", "pairs"]
    for _, label, _ in names:
        cols += [f"{label} arm/labels", f"Δ{label} [95% CI]"]
    cells = []
    for r in part.collapse_rows:
        if r["split"] != split:
            continue
        row = [r["arm"], r["model"], *(str(r[g]) for g in part.group_by), f"{r['kappa']:g}", str(r["pairs"])]
        for key, _, spec in names:
            row += [f"{fmt(r[f'arm_{key}'], spec)}/{fmt(r[f'labels_{key}'], spec)}",
                    f"{fmt(r[f'delta_{key}'], '+' + spec)} {ci_cell(r[f'delta_{key}_lo'], r[f'delta_{key}_hi'], '+' + spec)}"]
        cells.append(row)
    return cols, cells


COLLAPSE_LEGEND = ("Neural collapse of the penultimate features (kdcli collapse; 0 = collapsed): NC1 = tr(Σ_W Σ_B⁺)/C; "
                   "NC2 ETF = distance of the centred class means' normalised Gram matrix to the simplex ETF's; NC3 = "
                   "‖W/‖W‖ − M/‖M‖‖² (last layer vs class means); NC4 = share of samples where the nearest class mean "
                   "and the network disagree. Cells arm/labels (means over pairs); Δ = arm − labels [95% t-interval "
                   "over paired seeds]")

KAPPA_STAR_LEGEND = ("κ*: where mean PI first falls from above zero to zero or below along the κ grid, "
                     "interpolated in log κ; 95% interval from resampling paired seeds; 'not reached': PI > 0 "
                     "at every κ; 'below the grid': PI ≤ 0 at the smallest κ")


LM_LEGEND = ("PI: relative test CE reduction (%) = 100·(CE_labels − CE_KD)/CE_labels (CE: per-token test "
             "cross-entropy, nats); ppl red. % = 100·(1 − exp(CE_KD − CE_labels)); Δtop-1: top-1 token "
             "accuracy, KD − labels (points); bpb: bits per byte; OOD PI: PI on the out-of-distribution text")


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue().encode()


def _markdown(title: str, rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = _columns(rows)
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n\n"


REPORT_SUFFIXES = (".csv", ".md", ".json", ".png")


def write_outputs(result: ReportResult, out: Path, plots: bool) -> list[Path]:
    """Write every table and plot into a new folder beside --out, then swap it into place, so
    --out holds one report whole (the old one, or the new one), whatever moment a kill comes."""
    out = Path(out)
    if out.exists():
        names = [p.name for p in out.iterdir()] if out.is_dir() else None
        if names is None or (names and ("report.json" not in names or
                                        any(not n.endswith(REPORT_SUFFIXES) for n in names))):
            raise ArtifactError(f"--out {out}: exists and is not a kdcli report folder (it would be "
                                "replaced whole); choose a folder of its own")
    mine = f".kdcli-report-{out.name}-"  # this --out's folders only: sibling reports may be running
    for stale in out.parent.glob(f"{glob.escape(mine)}*.tmp") if out.parent.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # what a killed report left
    token = uuid.uuid4().hex[:8]
    staging, old = out.parent / f"{mine}{token}.tmp", out.parent / f"{mine}old-{token}.tmp"
    try:
        staging.mkdir(parents=True)
        written = _write_into(result, staging, plots)
        if out.exists():
            try:
                os.replace(out, old)
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                    raise
                # --out is a mount point: clear it and move the files in, each in one step
                for p in out.iterdir():
                    p.unlink()
                for p in staging.iterdir():
                    os.replace(p, out / p.name)
                return [out / p.name for p in written]
        os.replace(staging, out)
    except OSError as exc:
        raise ArtifactError(f"--out {out}: cannot write the report ({exc.strerror or exc}); check the "
                            "free space and permissions there") from None
    finally:
        for folder in (staging, old):
            shutil.rmtree(folder, ignore_errors=True)
    return [out / p.name for p in written]


def _write_into(result: ReportResult, out: Path, plots: bool) -> list[Path]:
    written = []

    def put(name: str, data: bytes) -> None:
        write_bytes(out / name, data)
        written.append(out / name)

    # an empty tree still gets the (empty) classification tables
    parts = result.kinds or [KindReport("classification", result.group_by, [], [], [], {}, [], [])]
    md = "# kdcli report\n\n"
    every = {}
    for part in parts:
        tables = {"pi_vs_kappa": part.rows, "label_smoothing_control": part.ls_table,
                  "cka_vs_kappa": part.cka_rows}
        if part.tau_tables:
            tables["tau_kappa"] = [{**t["panel"], "tau": tau, **{f"kappa={k:g}": v for k, v in zip(t["kappas"], row)}}
                                   for t in part.tau_tables for tau, row in zip(t["taus"], t["pi"])]
        tables["fidelity_correlation"] = [{"arm": a, **v} for a, v in part.fidelity.items()]
        tables["bias_variance"] = part.variance_rows
        tables["kappa_star"] = part.kappa_star_rows
        tables["collapse"] = part.collapse_rows
        what = pi_label(part.rows[0]) if part.rows else "PI"
        if part.lm:
            md += f"# Language models (sequence tasks)\n\n{LM_LEGEND}. Mean and 95% CI over paired seeds.\n\n"
        else:
            md += "# Classification\n\n" if len(parts) > 1 else ""
            md += f"{what}, mean and 95% CI over paired seeds.\n\n"
        for name, rows in tables.items():
            if rows:
                bare = [{k: v for k, v in r.items() if k != "seeds"} for r in rows]
                put(f"{name}{part.suffix}.csv", _csv(bare))
                title = name.replace("_", " ")
                lm = " (language models)" if part.lm else ""
                if name == "bias_variance":
                    for what, cols, cells in variance_tables(part):
                        md += _markdown_cells(f"bias and variance across seeds{lm}: {what}", cols, cells)
                    md += f"{VARIANCE_LEGEND}.\n\n"
                elif name == "kappa_star":
                    md += _markdown_cells(f"crossover κ*{lm}", *kappa_star_table(part)) + f"{KAPPA_STAR_LEGEND}.\n\n"
                elif name == "collapse":
                    for split in dict.fromkeys(r["split"] for r in rows):
                        md += _markdown_cells(f"neural collapse vs κ, {split} split", *collapse_table(part, split))
                    md += f"{COLLAPSE_LEGEND}.\n\n"
                elif not part.lm:
                    md += _markdown(title, bare)
                elif name == "pi_vs_kappa":
                    md += _markdown_cells(f"{title} (language models) — {what}",
                                          *pi_table(part, f"95% CI ({rows[0]['ci']})"))
                    md += f"Cells: {ci_note(rows[0]['ci'])}.\n\n"
                else:
                    unit = f" — PI ({part.unit})" if name in ("tau_kappa", "label_smoothing_control") else ""
                    md += _markdown(f"{title} (language models){unit}", bare)
            every[f"{name}{part.suffix}"] = rows
    put("report.md", md.encode())
    write_json(out / "report.json", {
        **every,
        "unpaired": [r["dir"] for r in result.pairing.unpaired],
        "duplicates": [r["dir"] for r in result.pairing.duplicates],
        "labels_without_teacher": [r["dir"] for r in result.pairing.no_teacher],
        "incomplete": result.scan.incomplete,
        "bias_variance_skipped": [why for k in result.kinds for why in k.variance_skipped],
        "damaged": [{"path": p, "why": why} for p, why in result.scan.damaged + result.damaged_files],
    })
    written.append(out / "report.json")
    if plots:
        for part in parts:
            if part.rows:
                written.extend(_plot(part, out))
    return written


def _markdown_cells(title: str, cols: list[str], cells: list[list[str]]) -> str:
    lines = [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n\n"


def _plot(part: KindReport, out: Path) -> list[Path]:
    """The plots of one task kind; language models' file names end in _lm."""
    from kdcli.report import plots as P

    sfx, written = part.suffix, []
    written.append(P.pi_vs_kappa(part.rows, out / f"pi_vs_kappa{sfx}.png", part.kappa_star_rows))
    primary_name = "ce" if part.lm and part.rows[0]["metric"] == "test_loss" else "accuracy"
    written.append(P.accuracy_vs_kappa(part.rows, out / f"{primary_name}_vs_kappa{sfx}.png"))
    if part.lm:
        written.append(P.lm_metrics_vs_kappa(part.rows, out / "ppl_acc_vs_kappa_lm.png"))
    points = [(agreement_gain(p), pair_pi(p), p.run["subset"]["kappa"]) for p in part.pairs]
    points = [pt for pt in points if not math.isnan(pt[0])]
    if points:
        written.append(P.fidelity_vs_pi(points, out / f"fidelity_vs_pi{sfx}.png",
                                        pi_label(part.rows[0]) if part.lm else "PI (points)", lm=part.lm))
    for i, table in enumerate(part.tau_tables):
        name = f"tau_kappa_heatmap{sfx}.png" if i == 0 else f"tau_kappa_heatmap{sfx}_{i + 1}.png"
        written.append(P.tau_kappa_heatmap(table, out / name, part.unit))
    if part.variance_rows:
        written.append(P.bias_variance_vs_kappa(part.variance_rows, out / f"bias_variance_vs_kappa{sfx}.png",
                                                lm=part.lm))
    if part.cka_rows:
        written.append(P.cka_vs_kappa(part.cka_rows, out / f"cka_vs_kappa{sfx}.png", lm=part.lm))
    if part.collapse_rows:
        written.append(P.collapse_vs_kappa(part.collapse_rows, out / f"collapse_vs_kappa{sfx}.png", part.cka_rows))
    stars = part.kappa_star_rows
    for against, name in (("teacher", "kappa_star_vs_teacher"), ("student", "kappa_star_vs_student")):
        if P.kappa_star_lines(stars, against):
            written.append(P.kappa_star_vs(stars, against, out / f"{name}{sfx}.png", lm=part.lm))
    return written
