"""Terminal output: the rich progress bar (the library's Progress protocol) and summary tables."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from kdcli.progress import Progress as ProgressProtocol

# Rich falls back to 80 columns when output is not a terminal (logs, slurm .out
# files), which folds wide tables; use a wider page there unless COLUMNS says otherwise.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


class ProgressBar(ProgressProtocol):
    """A rich progress bar on stderr; silent when not a TTY or quiet."""

    def __init__(self, description: str, quiet: bool = False):
        self.enabled = not quiet and sys.stderr.isatty()
        self.description = description
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=err_console, transient=True)
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def start(self, total: int, done: int = 0) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(self.description, total=total, completed=done, metrics="")

    def advance(self, done: int | None = None) -> None:
        if self.progress is not None:
            if done is None:
                self.progress.advance(self.task)
            else:
                self.progress.update(self.task, completed=done)

    def metrics(self, row: dict) -> None:
        if self.progress is not None:
            shown = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("test_"))
            self.progress.update(self.task, metrics=f"step {row['step']} {shown}")


@contextmanager
def sweep_progress(description: str, total: int, quiet: bool) -> Iterator[Callable[[], None]]:
    """A progress bar over a sweep's points (on a terminal, unless quiet); yields `advance`."""
    if quiet or not sys.stderr.isatty():
        yield lambda: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def skipped_line(out: str) -> str:
    return f"{out}: already complete, skipped (--overwrite to redo)"


def one_line(run: dict, out: str, seconds: float) -> str:
    """A completed run in one line (--quiet): where, the steps (resumed from which), the
    primary test metric, the seconds this process took."""
    final, attempt = run["final"], run["attempts"][-1]
    primary = run["task"]["primary"]
    resumed = f" (resumed at step {attempt['first_step']})" if attempt["first_step"] else ""
    return (f"{out}: completed {final['step']} steps{resumed}, {primary} {fmt(final.get(primary))}, "
            f"in {seconds:.1f} s")


def run_summary(title: str, run: dict) -> Table:
    """The final summary of a training run."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    sub = run["subset"]
    table.add_row("run dir", run.get("dir", ""))
    table.add_row("dataset", f"{run['dataset']['name']} (n_T = {sub['n_pool']})")
    table.add_row("model", f"{run['model']['name']} ({run['model']['parameters']:,} parameters)")
    table.add_row("κ / train samples", f"{sub['kappa']:g} / {sub['size']}")
    table.add_row("seed / subset seed", f"{run['config']['seed']} / {sub['seed']}")
    if run.get("recipe"):
        applied = ", ".join(f"{k} {v}" for k, v in run["recipe"]["applied"].items())
        table.add_row("recipe", f"{run['recipe']['name']}" + (f" ({applied})" if applied else ""))
    for key, value in run["final"].items():
        table.add_row(key, fmt(value))
    return table
