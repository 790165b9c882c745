"""Shared by the benchmarks: a progress receiver that times the loop's steps."""

from __future__ import annotations

import statistics
import time

from kdcli.progress import Progress


class StepTimer(Progress):
    """Steps per second between the first and the last optimizer step of a run."""

    def __init__(self):
        self.first = self.last = None
        self.steps = 0

    def advance(self, done: int | None = None) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now  # the first step carries one-off costs; time from here
        self.last, self.steps = now, self.steps + 1

    def rate(self) -> float:
        return (self.steps - 1) / (self.last - self.first)


def median(values: list[float]) -> float:
    return statistics.median(values)
