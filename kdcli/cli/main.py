"""Entry point: the typer app, and the one place library errors become messages."""

from __future__ import annotations

import os
import sys

import typer

from kdcli import __version__
from kdcli.errors import KdcliError

app = typer.Typer(
    name="kdcli",
    help="Knowledge-distillation research toolkit: how distillation depends on dataset size.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kdcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """kdcli stages: train-teacher → dump-logits → distill / train-labels → report."""


def _register() -> None:
    from kdcli.cli import cka, collapse, report, train  # noqa: F401  (they define the commands on `app`)


_register()


def print_error(label: str, message: str) -> None:
    from kdcli.cli.display import err_console

    err_console.print(f"[bold red]{label}:[/] {message}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console script: library errors print one red `Error:` line and exit non-zero."""
    try:
        app(standalone_mode=False)
    except KdcliError as exc:
        if os.environ.get("KDCLI_DEBUG"):
            raise
        print_error(exc.label, str(exc))
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print_error("Stopped", "interrupted (SIGINT); nothing was saved")
        sys.exit(130)
    except (ImportError, MemoryError) as exc:  # e.g. `import torch` under a tight memory limit
        if os.environ.get("KDCLI_DEBUG"):
            raise
        print_error("Error", f"{type(exc).__name__}: {str(exc) or 'out of memory'} (an incomplete "
                     "installation, or a memory limit too low to load PyTorch)")
        sys.exit(1)
    except OSError as exc:  # e.g. --out under a file, a read-only folder, a full disk
        if os.environ.get("KDCLI_DEBUG"):
            raise
        from kdcli.cli.display import err_console

        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(f"[bold red]Error:[/] {where}{exc.strerror or exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:
        # Usage errors (bad option values, unknown flags) are click exceptions; typer
        # vendors click in recent releases, so recognise them by their interface.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
