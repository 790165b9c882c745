"""Options that belong to the command line only (every setting lives in kdcli/config.py)."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")]
Grid = Annotated[list[str] | None, typer.Option(
    "--grid", help="Sweep KEY=V1,V2,… (repeatable); runs one point of the Cartesian product in OUT/<point>.")]
TaskIndex = Annotated[str | None, typer.Option(
    help="Which grid points to run (0-based), one after another in this process: N, A-B, a comma "
         "list of these (0-3,7) or all; default $SLURM_ARRAY_TASK_ID.")]
TaskBlock = Annotated[int | None, typer.Option(
    help="Points per task: the task index is then a block number, block i being points "
         "i·B … i·B+B−1 (one slurm array task per block); --print-grid prints the number of blocks.")]
PointDir = Annotated[str | None, typer.Option(
    help="Each point's run dir under OUT, naming every grid key in braces, e.g. 'k{kappa}/s{seed}' "
         "(default: kappa0.02_seed1).")]
StackSeeds = Annotated[bool, typer.Option(
    "--stack-seeds", help="Train the points that differ only in their seed as one model stack "
                          "(torch.func; small models): equal to separate runs to float rounding, not bit "
                          "for bit. Needs --grid seed=… and --checkpoint-every 0.")]
Workers = Annotated[int, typer.Option(
    help="Run the points over this many worker processes, the cores split among them (--threads "
         "per worker; default: the usable cores divided by the workers).")]
PrintGrid = Annotated[bool, typer.Option("--print-grid", help="Print the number of grid points and exit.")]


def keyword(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


QUIET = keyword("quiet", Quiet, False)
SWEEP = [keyword("grid", Grid, None), keyword("task_index", TaskIndex, None),
         keyword("task_block", TaskBlock, None), keyword("point_dir", PointDir, None),
         keyword("workers", Workers, 1), keyword("stack_seeds", StackSeeds, False),
         keyword("print_grid", PrintGrid, False)]
