"""`report`: the paper's tables and plots from a tree of run dirs.

Reads only run.json files (through kdcli.io.runs, the one reader of run dirs) and CKA
Parquet files, so it stays fast on thousands of runs. Each run's task (run.json `task`)
says which metric PI is computed from and how. Damaged runs and CKA files are listed
with the reason, never skipped silently. Writes CSV, Markdown and JSON tables and PNG
plots to --out.
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
from kdcli.report.pairs import Pair, Pairing, pair_runs
from kdcli.report.pi import (
    agreement_gain,
    fidelity_correlation,
    pair_pi,
    pi_rows,
    primary,
    varying_fields,
)


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
class ReportResult:
    rows: list[dict]
    group_by: tuple[str, ...]  # the row-splitting fields: asked for, plus settings that vary
    tau_tables: list[dict]
    ls_table: list[dict]
    fidelity: dict
    cka_rows: list[dict]
    scan: Found
    pairing: Pairing
    damaged_cka: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    written: list[Path] = field(default_factory=list)


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


def cka_rows(paths: list[str], runs: dict[str, dict], pairs: list[Pair]
             ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Mean CKA with the teacher per (arm, estimator, κ), from CKA files linking teacher and
    student; and the CKA files that could not be read, with the reason."""
    from kdcli.io.cka import read_cka

    labels_ids = {p.labels["run_id"] for p in pairs}
    arm_of = {p.run["run_id"]: p.arm for p in pairs} | {i: "labels" for i in labels_ids}
    values: dict[tuple, list[float]] = defaultdict(list)
    damaged = []
    for path in paths:
        try:
            table, meta = read_cka(path, flag="CKA file")
        except ArtifactError as exc:
            damaged.append((path, str(exc)))
            continue
        ids = [meta.get("run_a_id"), meta.get("run_b_id")]
        students = [i for i in ids if i in arm_of]
        teachers = [i for i in ids if i in runs and runs[i].get("stage") == "train-teacher"]
        if len(students) != 1 or len(teachers) != 1:
            continue
        student = runs[students[0]]
        for row in table:
            values[(arm_of[students[0]], row["estimator"], student["subset"]["kappa"])].append(row["value"])
    return [{"arm": a, "estimator": e, "kappa": k, "cka": sum(v) / len(v), "n": len(v)}
            for (a, e, k), v in sorted(values.items())], damaged


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
    group_by = tuple(dict.fromkeys([*cfg.group_by, *varying_fields(pairing.pairs)]))
    rows = pi_rows(pairing.pairs, teacher_metric, group_by, cfg.bootstrap)
    by_id = {r["run_id"]: r for r in found.runs}
    cka, damaged_cka = cka_rows(found.cka_files, by_id, pairing.pairs)
    result = ReportResult(rows, group_by, tau_tables(rows, group_by), ls_table(rows, group_by),
                          fidelity_correlation(pairing.pairs), cka, found, pairing, damaged_cka)
    if cfg.out is not None:
        result.written = write_outputs(result, Path(cfg.out), cfg.plots)
    return result


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
    from kdcli.report import plots as P

    written = []

    def put(name: str, data: bytes) -> None:
        write_bytes(out / name, data)
        written.append(out / name)

    tables = {"pi_vs_kappa": result.rows, "label_smoothing_control": result.ls_table,
              "cka_vs_kappa": result.cka_rows}
    if result.tau_tables:
        tables["tau_kappa"] = [{**t["panel"], "tau": tau, **{f"kappa={k:g}": v for k, v in zip(t["kappas"], row)}}
                               for t in result.tau_tables for tau, row in zip(t["taus"], t["pi"])]
    tables["fidelity_correlation"] = [{"arm": a, **v} for a, v in result.fidelity.items()]
    from kdcli.report.plots import pi_label

    what = pi_label(result.rows[0]) if result.rows else "PI"
    md = f"# kdcli report\n\n{what}, mean and 95% CI over paired seeds.\n\n"
    for name, rows in tables.items():
        if rows:
            put(f"{name}.csv", _csv([{k: v for k, v in r.items() if k != "seeds"} for r in rows]))
            md += _markdown(name.replace("_", " "), [{k: v for k, v in r.items() if k != "seeds"} for r in rows])
    put("report.md", md.encode())
    write_json(out / "report.json", {
        **{name: rows for name, rows in tables.items()},
        "unpaired": [r["dir"] for r in result.pairing.unpaired],
        "duplicates": [r["dir"] for r in result.pairing.duplicates],
        "labels_without_teacher": [r["dir"] for r in result.pairing.no_teacher],
        "incomplete": result.scan.incomplete,
        "damaged": [{"path": p, "why": why} for p, why in result.scan.damaged + result.damaged_cka],
    })
    written.append(out / "report.json")
    if plots and result.rows:
        written.append(P.pi_vs_kappa(result.rows, out / "pi_vs_kappa.png"))
        written.append(P.accuracy_vs_kappa(result.rows, out / "accuracy_vs_kappa.png"))
        points = [(agreement_gain(p), pair_pi(p), p.run["subset"]["kappa"]) for p in result.pairing.pairs]
        points = [pt for pt in points if not math.isnan(pt[0])]
        if points:
            written.append(P.fidelity_vs_pi(points, out / "fidelity_vs_pi.png"))
        for i, table in enumerate(result.tau_tables):
            name = "tau_kappa_heatmap.png" if i == 0 else f"tau_kappa_heatmap_{i + 1}.png"
            written.append(P.tau_kappa_heatmap(table, out / name))
        if result.cka_rows:
            written.append(P.cka_vs_kappa(result.cka_rows, out / "cka_vs_kappa.png"))
    return written


