"""Options that belong to the command line only (every setting lives in kdcli/config.py)."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")]
Grid = Annotated[list[str] | None, typer.Option(
    "--grid", help="Sweep KEY=V1,V2,… (repeatable); runs one point of the Cartesian product in OUT/<point>.")]
TaskIndex = Annotated[int | None, typer.Option(
    help="Which grid point to run (0-based); default $SLURM_ARRAY_TASK_ID.")]
PrintGrid = Annotated[bool, typer.Option("--print-grid", help="Print the number of grid points and exit.")]


def keyword(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


QUIET = keyword("quiet", Quiet, False)
SWEEP = [keyword("grid", Grid, None), keyword("task_index", TaskIndex, None),
         keyword("print_grid", PrintGrid, False)]
