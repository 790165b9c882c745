"""SIGTERM and SIGINT during training: finish the step, save a checkpoint, stop.

Clusters preempt a job with SIGTERM and kill it (SIGKILL) some seconds later; Ctrl-C
sends SIGINT. While training, either only sets a flag; the loop checks it after each
step, saves its checkpoint and raises `Stopped`, which the CLI turns into one line and
exit status 75 (SIGTERM) or 130 (SIGINT). A second signal while the first is handled
acts as it would without kdcli (SIGINT raises KeyboardInterrupt, SIGTERM ends the
process), except a repeated SIGTERM, which is ignored: slurm delivers one preemption
twice (to every process of the job, and through the batch script that forwards it), and
sends SIGKILL on its own schedule. Handlers are only installed in the main thread and
removed after training.
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
        if self.signum is not None:  # a second signal: do what it would have done
            signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum

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

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
