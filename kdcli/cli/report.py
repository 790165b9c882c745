"""`report`: the PI-vs-κ tables and plots of a tree of runs."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from kdcli.cli.main import app


def _f(v, spec: str = ".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@app.command("report")
def report_cmd(
    root: Annotated[str, typer.Argument(help="Folder searched recursively for run dirs and cka*.parquet files.")],
    out: Annotated[str | None, typer.Option(help="Folder for CSV/Markdown/JSON tables and PNG plots.")] = None,
    group_by: Annotated[list[str] | None, typer.Option(
        "--group-by", help="Config field that splits rows further (repeatable), e.g. lr.")] = None,
    filter_: Annotated[list[str] | None, typer.Option(
        "--filter", help="Keep runs whose config has KEY=VALUE (repeatable), e.g. model=cnn1d.")] = None,
    bootstrap: Annotated[int, typer.Option(
        help="Bootstrap CI with this many resamples instead of the t-interval (0 = t).")] = 0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots with --out.")] = True,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check every run's files against the sha256 in its run.json (reads them "
                         "all); by default only their presence and size are checked.")] = False,
) -> None:
    """Pair students with their label-trained twins: PI per κ, τ, ε (for classification
    acc(arm) − acc(labels) in points; each run's task says which metric)."""
    from rich.table import Table

    from kdcli.cli.display import console, err_console
    from kdcli.stages import report

    cfg = report.ReportConfig(root=root, out=out, group_by=tuple(group_by or ()),
                              filters=tuple(filter_ or ()), bootstrap=bootstrap, plots=plots,
                              verify=verify)
    result = report.run(cfg)
    ci_name = f"95% CI ({'bootstrap' if bootstrap else 't'})"
    table = Table(title=f"PI vs κ — {root}", header_style="bold")
    metric = result.rows[0]["metric"].removeprefix("test_") if result.rows else "acc"
    cols = ["arm", "model", *result.group_by, "κ", "n", "pairs", f"arm {metric}", f"labels {metric}", "PI",
            ci_name, f"teacher {metric}", "agree arm/labels", "KL arm/labels"]
    for name in cols:
        table.add_column(name, justify="left" if name in ("arm", "model") else "right")
    for r in result.rows:
        ci = "—" if math.isnan(r["pi_lo"]) else f"[{r['pi_lo']:+.2f}, {r['pi_hi']:+.2f}]"
        table.add_row(r["arm"], r["model"], *(str(r[g]) for g in result.group_by), f"{r['kappa']:g}",
                      str(r["n_train"]), str(r["pairs"]), _f(r["arm_metric"]), _f(r["labels_metric"]),
                      _f(r["pi"], "+.2f"), ci, _f(r["teacher_metric"]),
                      f"{_f(r['arm_agreement'], '.1f')}/{_f(r['labels_agreement'], '.1f')}",
                      f"{_f(r['arm_kl'], '.3f')}/{_f(r['labels_kl'], '.3f')}")
    if result.rows:
        console.print(table)
    else:
        err_console.print(f"{root}: no distill / train-labels pairs found ({len(result.scan.runs)} completed runs)")
    for t in result.tau_tables:
        panel = ", ".join(f"{k}={v}" for k, v in t["panel"].items() if k != "teacher")
        heat = Table(title=f"PI by τ × κ (points, α = 1) — {panel}", header_style="bold")
        heat.add_column("τ \\ κ")
        for k in t["kappas"]:
            heat.add_column(f"{k:g}", justify="right")
        for tau, row in zip(t["taus"], t["pi"]):
            heat.add_row(f"{tau:g}", *(_f(v, "+.2f") for v in row))
        console.print(heat)
    if result.ls_table:
        arms = [k for k in result.ls_table[0] if k not in ("model", "teacher", "kappa", *result.group_by)]
        ls = Table(title="Label-smoothing control: PI (points) per arm", header_style="bold")
        for name in ["κ", *arms]:
            ls.add_column(name, justify="right")
        for r in result.ls_table:
            ls.add_row(f"{r['kappa']:g}", *(_f(r.get(a), "+.2f") for a in arms))
        console.print(ls)
    if result.fidelity:
        fid = Table(title="Does fidelity track PI? Pearson r across pairs", header_style="bold")
        for name in ("arm", "pairs", "r(PI, agreement gain)", "r(PI, KL reduction)"):
            fid.add_column(name, justify="right")
        for a, v in result.fidelity.items():
            fid.add_row(a, str(v["pairs"]), _f(v["r_pi_agreement_gain"], "+.3f"), _f(v["r_pi_kl_reduction"], "+.3f"))
        console.print(fid)
    if result.cka_rows:
        cka = Table(title="CKA with the teacher vs κ", header_style="bold")
        for name in ("arm", "estimator", "κ", "CKA", "files"):
            cka.add_column(name, justify="right")
        for r in result.cka_rows:
            cka.add_row(r["arm"], r["estimator"], f"{r['kappa']:g}", _f(r["cka"], ".4f"), str(r["n"]))
        console.print(cka)
    for label, dirs in (("unpaired", [r["dir"] for r in result.pairing.unpaired]),
                        ("duplicate (not counted)", [r["dir"] for r in result.pairing.duplicates]),
                        ("label run without --teacher (cannot pair)", [r["dir"] for r in result.pairing.no_teacher]),
                        ("incomplete (no run.json)", result.scan.incomplete)):
        for d in dirs:
            err_console.print(f"{label}: {d}")
    for _path, why in result.scan.damaged + result.damaged_cka:
        err_console.print(f"damaged, not counted: {why}", highlight=False, soft_wrap=True)
    if result.written:
        console.print(f"wrote {len(result.written)} files to {out}")
