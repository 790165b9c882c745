"""`report`: the paper's tables and plots from a tree of run dirs.

Reads only run.json files (and CKA Parquet files), so it stays fast on
thousands of runs. Writes CSV, Markdown and JSON tables and PNG plots to --out.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kdcli.errors import ConfigError
from kdcli.io.atomic import write_bytes, write_json
from kdcli.report.pairs import Pair, Pairing, Scan, pair_runs, scan
from kdcli.report.pi import fidelity_correlation, final_metric, pi_rows


@dataclass(frozen=True)
class ReportConfig:
    root: str
    out: str | None = None
    group_by: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()  # KEY=VALUE on run config fields (or `stage`, `dataset`)
    bootstrap: int = 0  # >0: bootstrap CI with this many resamples instead of the t-interval
    plots: bool = True


@dataclass
class ReportResult:
    rows: list[dict]
    tau_table: dict | None
    ls_table: list[dict]
    fidelity: dict
    cka_rows: list[dict]
    scan: Scan
    pairing: Pairing
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


def tau_table(rows: list[dict]) -> dict | None:
    """PI by τ × κ over the KD arms (α = 1 first); None with fewer than two τ."""
    kd = [r for r in rows if r["arm"].startswith("kd")]
    taus = sorted({r["tau"] for r in kd})
    if len(taus) < 2:
        return None
    kappas = sorted({r["kappa"] for r in kd})
    cell = {(r["tau"], r["kappa"]): r["pi"] for r in kd}
    return {"taus": taus, "kappas": kappas,
            "pi": [[cell.get((t, k), math.nan) for k in kappas] for t in taus]}


def ls_table(rows: list[dict]) -> list[dict]:
    """Per κ: PI of each KD arm next to PI of each label-smoothing arm."""
    by_kappa: dict[float, dict] = defaultdict(dict)
    arms = sorted({r["arm"] for r in rows if r["arm"].startswith("ls")})
    if not arms:
        return []
    for r in rows:
        by_kappa[r["kappa"]][r["arm"]] = r["pi"]
    return [{"kappa": k, **cols} for k, cols in sorted(by_kappa.items())]


def cka_rows(paths: list[str], runs: dict[str, dict], pairs: list[Pair]) -> list[dict]:
    """Mean CKA with the teacher per (arm, estimator, κ), from CKA files linking teacher and student."""
    import pyarrow.parquet as pq

    labels_ids = {p.labels["run_id"] for p in pairs}
    arm_of = {p.run["run_id"]: p.arm for p in pairs} | {i: "labels" for i in labels_ids}
    values: dict[tuple, list[float]] = defaultdict(list)
    for path in paths:
        try:
            table = pq.read_table(path)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        except Exception:  # noqa: BLE001  not a readable CKA file: not ours to judge here
            continue
        ids = [meta.get("run_a_id"), meta.get("run_b_id")]
        students = [i for i in ids if i in arm_of]
        teachers = [i for i in ids if i in runs and runs[i].get("stage") == "train-teacher"]
        if len(students) != 1 or len(teachers) != 1:
            continue
        student = runs[students[0]]
        for row in table.to_pylist():
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
    found = scan(cfg.root)
    selected = [r for r in found.runs if _matches(r, filters) or r.get("stage") == "train-teacher"]
    pairing = pair_runs(selected)
    teacher_acc = {r["run_id"]: 100 * r["final"]["test_acc"] for r in found.runs
                   if r.get("stage") == "train-teacher"}
    rows = pi_rows(pairing.pairs, teacher_acc, cfg.group_by, cfg.bootstrap)
    by_id = {r["run_id"]: r for r in found.runs}
    result = ReportResult(rows, tau_table(rows), ls_table(rows), fidelity_correlation(pairing.pairs),
                          cka_rows(found.cka_files, by_id, pairing.pairs), found, pairing)
    if cfg.out is not None:
        result.written = write_outputs(result, Path(cfg.out), cfg.plots)
    return result


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue().encode()


def _markdown(title: str, rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n\n"


def write_outputs(result: ReportResult, out: Path, plots: bool) -> list[Path]:
    from kdcli.report import plots as P

    written = []

    def put(name: str, data: bytes) -> None:
        write_bytes(out / name, data)
        written.append(out / name)

    tables = {"pi_vs_kappa": result.rows, "label_smoothing_control": result.ls_table,
              "cka_vs_kappa": result.cka_rows}
    if result.tau_table:
        t = result.tau_table
        tables["tau_kappa"] = [{"tau": tau, **{f"kappa={k:g}": v for k, v in zip(t["kappas"], row)}}
                               for tau, row in zip(t["taus"], t["pi"])]
    tables["fidelity_correlation"] = [{"arm": a, **v} for a, v in result.fidelity.items()]
    md = "# kdcli report\n\nPI = acc(arm) − acc(labels) in points, mean and 95% CI over paired seeds.\n\n"
    for name, rows in tables.items():
        if rows:
            put(f"{name}.csv", _csv([{k: v for k, v in r.items() if k != "seeds"} for r in rows]))
            md += _markdown(name.replace("_", " "), [{k: v for k, v in r.items() if k != "seeds"} for r in rows])
    put("report.md", md.encode())
    write_json(out / "report.json", {
        **{name: rows for name, rows in tables.items()},
        "unpaired": [r["dir"] for r in result.pairing.unpaired],
        "duplicates": [r["dir"] for r in result.pairing.duplicates],
        "incomplete": result.scan.incomplete,
        "unreadable": result.scan.unreadable,
    })
    written.append(out / "report.json")
    if plots and result.rows:
        written.append(P.pi_vs_kappa(result.rows, out / "pi_vs_kappa.png"))
        written.append(P.accuracy_vs_kappa(result.rows, out / "accuracy_vs_kappa.png"))
        points = [(100 * (final_metric(p.run, "teacher_agreement")
                          - final_metric(p.labels, "teacher_agreement")),
                   100 * (p.run["final"]["test_acc"] - p.labels["final"]["test_acc"]),
                   p.run["subset"]["kappa"]) for p in result.pairing.pairs]
        points = [pt for pt in points if not math.isnan(pt[0])]
        if points:
            written.append(P.fidelity_vs_pi(points, out / "fidelity_vs_pi.png"))
        if result.tau_table:
            written.append(P.tau_kappa_heatmap(result.tau_table, out / "tau_kappa_heatmap.png"))
        if result.cka_rows:
            written.append(P.cka_vs_kappa(result.cka_rows, out / "cka_vs_kappa.png"))
    return written


