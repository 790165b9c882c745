"""`collapse`: neural collapse (NC1–NC4) of completed runs' penultimate features."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from kdcli.cli import build
from kdcli.cli import options as o
from kdcli.cli.main import app

DOC = ("Neural collapse (NC1–NC4) of completed classification runs' penultimate features, per run "
       "and split, into one Parquet file (report plots it against κ).")


def _collapse(run_dirs: list[str] | None, quiet: bool, **values) -> None:
    from kdcli.cli.display import ProgressBar, console, err_console
    from kdcli.config import CollapseConfig
    from kdcli.stages import collapse

    cfg = CollapseConfig(runs=tuple(run_dirs or ()), **build.config_values(CollapseConfig, values))
    with ProgressBar(f"collapse {cfg.out}", quiet) as bar:
        result = collapse.run(cfg, progress=bar)
    if result.skipped:
        err_console.print(f"{cfg.out}: already holds this measurement, skipped (--overwrite to redo)")
    if quiet:
        return
    console.print(_table(result.rows))
    if not result.skipped:
        console.print(f"wrote {result.path}")


def _table(rows: list[dict]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Neural collapse (0 = collapsed)", header_style="bold")
    for name in ("run", "split", "n", "C", "NC1", "NC2 norm", "NC2 angle", "NC2 ETF", "NC3", "NC4", "acc"):
        table.add_column(name, justify="left" if name in ("run", "split") else "right")
    for r in rows:
        table.add_row(escape(r["run_dir"]), r["split"], str(r["n"]), str(r["classes"]), f"{r['nc1']:.4g}",
                      f"{r['nc2_equinorm']:.3f}", f"{r['nc2_equiangular']:.3f}", f"{r['nc2_etf']:.3f}",
                      f"{r['nc3']:.3f}", f"{r['nc4']:.3f}", f"{100 * r['accuracy']:.2f}")
    return table


def _register() -> None:
    from kdcli.config import CollapseConfig

    run_dirs = inspect.Parameter("run_dirs", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        list[str] | None, typer.Argument(metavar="RUN...", show_default=False,
                                         help="Completed classification run dirs (teachers and students).")])
    build.register(app, "collapse", _collapse, [run_dirs, *build.option_parameters(CollapseConfig), o.QUIET], DOC)


_register()
