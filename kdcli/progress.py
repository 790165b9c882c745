"""The one progress protocol of long computations (training, dump-logits, cka).

The library reports through it; the CLI draws a rich progress bar with it
(kdcli/cli/display.py). The base class does nothing, so library callers may pass none.
"""

from __future__ import annotations


class Progress:
    def start(self, total: int, done: int = 0) -> None:
        """`total` units of work (steps, batches), `done` of them already (a resumed run)."""

    def advance(self, done: int | None = None) -> None:
        """`done` units are now complete; None: one more is."""

    def metrics(self, row: dict) -> None:
        """The latest evaluation (a metrics.parquet row)."""
