"""SIGTERM and SIGINT during training: finish the step, save a checkpoint, stop.

Clusters preempt a job with SIGTERM and kill it (SIGKILL) some seconds later; Ctrl-C
sends SIGINT. While training, either only sets a flag; the loop checks it after each
step, saves its checkpoint and raises `Stopped`, which the CLI turns into one line and
exit status 75 (SIGTERM) or 130 (SIGINT). A second signal while the first is handled
acts as it would without kdcli (SIGINT raises KeyboardInterrupt, SIGTERM ends the
process), except a repeated SIGTERM, which is ignored: slurm delivers one preemption
twice (to every process of the job, and through the batch script that forwards it), and
sends SIGKILL on its own schedule. Handlers are only installed in the main thread and
removed after training. They nest: a sweep running several points holds one around them
(stopping before the next point when a signal came between runs, or during a run's last
step, when there was nothing left to checkpoint).
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGTERM == signum:  # the same request again: already stopping
            return
        if self.signum is not None:  # a second signal: do what it would have done without kdcli
            signal.signal(signum, self._outermost(signum))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def _outermost(self, signum: int):
        """The handler before any StopOnSignal (they nest: a sweep's around each run's)."""
        handler = self._previous.get(signum)
        while isinstance(getattr(handler, "__self__", None), StopOnSignal):
            handler = handler.__self__._previous.get(signum)
        return handler if handler is not None else signal.SIG_DFL

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is signal.SIG_IGN:  # e.g. SIGINT of `cmd &`: stays ignored
                    continue
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        # a signal this one caught but did not act on (it came during the last step) goes to the
        # enclosing StopOnSignal, if any: a sweep then stops before its next point
        outer = getattr(self._previous.get(self.signum), "__self__", None) if self.signum else None
        if isinstance(outer, StopOnSignal) and outer.signum is None:
            outer.signum = self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
