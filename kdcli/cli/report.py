"""`report`: the PI-vs-κ tables and plots of a tree of runs."""

from __future__ import annotations

from typing import Annotated

import typer

from kdcli.cli.main import app


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
    acc(arm) − acc(labels) in points; for language models the relative reduction of the
    per-token test cross-entropy in %, beside the perplexity reduction, the top-1 token
    accuracy change and bits per byte). Classification and language models get tables of
    their own."""
    from rich.markup import escape
    from rich.table import Table

    from kdcli.cli.display import console, err_console
    from kdcli.report.variance import BEFORE_PREDICTIONS
    from kdcli.stages import report

    cfg = report.ReportConfig(root=root, out=out, group_by=tuple(group_by or ()),
                              filters=tuple(filter_ or ()), bootstrap=bootstrap, plots=plots,
                              verify=verify)
    result = report.run(cfg)
    ci_name = f"95% CI ({'bootstrap' if bootstrap else 't'})"
    if not result.rows:
        err_console.print(f"{root}: no distill / train-labels pairs found ({len(result.scan.runs)} completed runs)")
    for part in result.kinds:
        # one block of tables per task kind: classification, then language models
        lm = "Language models — " if part.lm else ""
        group_by = part.group_by
        if part.lm:
            title = f"PI vs κ, language models: {report.pi_label(part.rows[0])} — {root}"
        else:
            title = f"PI vs κ — {root}"
        table = Table(title=title, header_style="bold",
                      caption=report.ci_note(part.rows[0]["ci"]) if part.lm else None)
        cols, cells = report.pi_table(part, ci_name)
        for name in cols:
            # the LM table is wide: rich folds its cells that have spaces, never cuts '3.410/3.535'
            fixed = part.lm and name.endswith(" arm/labels")
            table.add_column(name.replace(" arm/labels", "\narm/labels") if fixed else name, no_wrap=fixed,
                             justify="left" if name in ("arm", "model") else "right")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        for t in part.tau_tables:
            panel = ", ".join(f"{k}={v}" for k, v in t["panel"].items() if k != "teacher")
            heat = Table(title=f"{lm}PI by τ × κ ({part.unit}, α = 1) — {panel}", header_style="bold")
            heat.add_column("τ \\ κ")
            for k in t["kappas"]:
                heat.add_column(f"{k:g}", justify="right")
            for tau, row in zip(t["taus"], t["pi"]):
                heat.add_row(f"{tau:g}", *(report.fmt(v, "+.2f") for v in row))
            console.print(heat)
        if part.ls_table:
            arms = [k for k in part.ls_table[0] if k not in ("model", "teacher", "kappa", *group_by)]
            ls = Table(title=f"{lm}Label-smoothing control: PI ({part.unit}) per arm", header_style="bold")
            for name in ["κ", *arms]:
                ls.add_column(name, justify="right")
            for r in part.ls_table:
                ls.add_row(f"{r['kappa']:g}", *(report.fmt(r.get(a), "+.2f") for a in arms))
            console.print(ls)
        if part.fidelity:
            fid = Table(title=f"{lm}Does fidelity track PI? Pearson r across pairs", header_style="bold")
            for name in ("arm", "pairs", "r(PI, agreement gain)", "r(PI, KL reduction)"):
                fid.add_column(name, justify="right")
            for a, v in part.fidelity.items():
                fid.add_row(a, str(v["pairs"]), report.fmt(v["r_pi_agreement_gain"], "+.3f"),
                            report.fmt(v["r_pi_kl_reduction"], "+.3f"))
            console.print(fid)
        tables = [(f"Bias and variance across seeds: {what}", cols, cells, None)
                  for what, cols, cells in report.variance_tables(part)] if part.variance_rows else []
        if tables:
            tables[-1] = (*tables[-1][:3], report.VARIANCE_LEGEND)
        if part.kappa_star_rows:
            tables.append(("Crossover κ* (where PI falls to 0)", *report.kappa_star_table(part),
                           report.KAPPA_STAR_LEGEND))
        splits = list(dict.fromkeys(r["split"] for r in part.collapse_rows))
        for i, split in enumerate(splits):
            tables.append((f"Neural collapse vs κ, {split} split", *report.collapse_table(part, split),
                           report.COLLAPSE_LEGEND if i == len(splits) - 1 else None))
        for title, cols, cells, legend in tables:
            t = Table(title=f"{lm}{title}", header_style="bold", caption=legend)
            for name in cols:
                t.add_column(name, justify="left" if name in ("arm", "model") else "right")
            for row in cells:
                t.add_row(*(escape(c) for c in row))  # '[0.12, 0.40]' is a cell, not rich markup
            console.print(t)
        old = [why for why in part.variance_skipped if why.endswith(BEFORE_PREDICTIONS)]
        if old:  # one line for a tree of old runs, not one per row
            err_console.print(f"no bias-variance rows for {len(old)} PI rows{' (language models)' if part.lm else ''}: their runs were "
                              f"{BEFORE_PREDICTIONS} (e.g. {old[0].split(': ')[1]})", highlight=False, soft_wrap=True)
        for why in part.variance_skipped:
            if not why.endswith(BEFORE_PREDICTIONS):
                err_console.print(f"no bias-variance row: {why}", highlight=False, soft_wrap=True)
        if part.cka_rows:
            cka = Table(title=f"{lm}CKA with the teacher vs κ", header_style="bold")
            for name in ("arm", "estimator", "κ", "CKA", "files"):
                cka.add_column(name, justify="right")
            for r in part.cka_rows:
                cka.add_row(r["arm"], r["estimator"], f"{r['kappa']:g}", report.fmt(r["cka"], ".4f"), str(r["n"]))
            console.print(cka)
    for label, dirs in (("unpaired", [r["dir"] for r in result.pairing.unpaired]),
                        ("duplicate (not counted)", [r["dir"] for r in result.pairing.duplicates]),
                        ("label run without --teacher (cannot pair)", [r["dir"] for r in result.pairing.no_teacher]),
                        ("incomplete (no run.json)", result.scan.incomplete)):
        for d in dirs:
            err_console.print(f"{label}: {d}")
    for _path, why in result.scan.damaged + result.damaged_files:
        err_console.print(f"damaged, not counted: {why}", highlight=False, soft_wrap=True)
    if result.written:
        console.print(f"wrote {len(result.written)} files to {out}")
