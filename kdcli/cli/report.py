"""`report`: the PI-vs-κ table of a tree of runs."""

from __future__ import annotations

from typing import Annotated

import typer

from kdcli.cli.main import app


@app.command("report")
def report_cmd(
    root: Annotated[str, typer.Argument(help="Folder searched recursively for run dirs.")],
    out: Annotated[str | None, typer.Option(help="Folder for pi_vs_kappa.csv and .json.")] = None,
) -> None:
    """Pair distill and train-labels students and print PI = acc(KD) − acc(labels) per κ."""
    from rich.table import Table

    from kdcli.cli.display import console, err_console
    from kdcli.stages import report

    result = report.run(root, out)
    table = Table(title=f"PI vs κ ({root})", header_style="bold")
    for name in ("model", "τ", "κ", "n", "pairs", "KD acc", "labels acc", "PI (points)", "95% CI",
                 "teacher acc", "KD agree", "labels agree"):
        table.add_column(name, justify="right")
    for r in result.rows:
        ci = "—" if r["pairs"] < 2 else f"[{r['pi_lo']:+.2f}, {r['pi_hi']:+.2f}]"
        table.add_row(r["model"], f"{r['tau']:g}", f"{r['kappa']:g}", str(r["n_train"]), str(r["pairs"]),
                      f"{r['kd_acc']:.2f}", f"{r['labels_acc']:.2f}", f"{r['pi']:+.2f}", ci,
                      f"{r['teacher_acc']:.2f}", f"{r['kd_agreement']:.1f}", f"{r['labels_agreement']:.1f}")
    console.print(table)
    for label, dirs in (("unpaired", [r["dir"] for r in result.pairing.unpaired]),
                        ("duplicate (not counted)", [r["dir"] for r in result.pairing.duplicates]),
                        ("incomplete (no run.json)", result.scan.incomplete),
                        ("unreadable run.json", result.scan.unreadable)):
        for d in dirs:
            err_console.print(f"{label}: {d}")
    for path in result.written:
        console.print(f"wrote {path}")
