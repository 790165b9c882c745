"""--workers N: the points of a sweep run by N worker processes, the cores split among them.

Points are handed out in grid order, each to the next free worker; a worker runs its points
one after another (torch imported once per worker), each with the same thread count, so a
point's result does not depend on which worker ran it: a label-trained student is bit for bit
the one a separate process with that thread count makes. One display for the whole sweep: a
line per finished point, and a progress bar over the points on a terminal. A failed point is
reported and the others go on. SIGTERM to this process is passed on to the workers, whose
running points save a checkpoint and stop; the sweep then exits 75 like a single run.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import time
from pathlib import Path

from kdcli.errors import ConfigError, KdcliError, Stopped
from kdcli.sweep import point_error, points_failed


def usable_cores() -> int:
    """What slurm gave this task, else every core this process may use."""
    from kdcli.train.device import affinity_cores, slurm_cpus

    return slurm_cpus() or affinity_cores()


def split_threads(configs: list, workers: int) -> list:
    """Each point's config with the thread count of one worker: --threads as given, else the
    usable cores divided among the workers. Refuses more workers than points or than the
    cores allow."""
    cores = usable_cores()
    if workers > len(configs):
        raise ConfigError(f"--workers {workers}: more workers than the {len(configs)} points to run")
    threads = configs[0].threads or max(1, cores // workers)
    if workers * threads > cores:
        raise ConfigError(f"--workers {workers} with --threads {threads}: needs {workers * threads} cores, "
                          f"this process may use {cores}; use fewer workers or threads")
    return [cfg.replace(threads=threads) for cfg in configs]


def _worker(stage: str, tasks, results) -> None:
    """Run points from `tasks` until it hands out None; report each to `results`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    from kdcli.io.shared import sharing
    from kdcli.stages import distill, train
    from kdcli.train.signals import StopOnSignal

    module = distill if stage == "distill" else train
    with sharing(), StopOnSignal() as stop:  # the dataset, logits, checks: once per worker
        _run_points(module, tasks, results, stop)


def _run_points(module, tasks, results, stop) -> None:
    from kdcli.cli.display import one_line, skipped_line

    while (item := tasks.get()) is not None:
        index, cfg = item
        if stop.signum is not None:  # a signal between points: stop before this one
            results.put((index, "stopped", f"{stop.name} before {cfg.out}"))
            return
        started = time.perf_counter()
        try:
            result = module.run(cfg)
        except Stopped as exc:
            results.put((index, "stopped", f"{exc}"))
            return
        except (KdcliError, OSError) as exc:
            results.put((index, "error", point_error(cfg, exc)))
            continue
        except BaseException as exc:  # a bug: reported as this point's failure, the worker ends
            results.put((index, "error", f"{cfg.out}: {type(exc).__name__}: {exc}"))
            raise
        if result.skipped:
            results.put((index, "skipped", skipped_line(cfg.out)))
        else:
            results.put((index, "done", one_line(result.run, cfg.out, time.perf_counter() - started)))


def run_workers(stage: str, configs: list, workers: int, quiet: bool) -> None:
    from kdcli.cli.display import console, err_console, sweep_progress
    from kdcli.cli.main import print_error

    configs = split_threads(configs, workers)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold OpenMP threads
    tasks, results = ctx.Queue(), ctx.Queue()
    for item in enumerate(configs):
        tasks.put(item)
    for _ in range(workers):
        tasks.put(None)
    procs = [ctx.Process(target=_worker, args=(stage, tasks, results)) for _ in range(workers)]
    for p in procs:
        p.start()

    stop: list[int] = []

    def forward(signum, frame):
        again = bool(stop)
        if not stop:
            stop.append(signum)
        for p in procs:
            if p.is_alive():  # the first signal asks the workers to checkpoint; a second kills them
                os.kill(p.pid, signal.SIGKILL if again else signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    failed, stopped, reported = [], [], set()
    try:
        with sweep_progress(f"{stage}: {len(configs)} points, {workers} workers × {configs[0].threads} "
                            "threads", len(configs), quiet) as advance:
            while len(reported) < len(configs):
                try:
                    index, status, text = results.get(timeout=0.5)
                except queue.Empty:
                    if not any(p.is_alive() for p in procs) and results.empty():
                        break  # every worker ended (stopped, or killed) before handing back all points
                    continue
                reported.add(index)
                if status in ("done", "skipped"):
                    (console if status == "done" else err_console).print(text, highlight=False, soft_wrap=True)
                elif status == "stopped":
                    stopped.append(text)
                else:
                    print_error("Error", text)
                    failed.append(Path(configs[index].out).name)
                advance()
    finally:
        tasks.cancel_join_thread()  # points never handed out must not keep this process alive
        for p in procs:
            p.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped or stop:
        signum = stop[0] if stop else signal.SIGTERM
        raise Stopped(f"{signal.Signals(signum).name}: the sweep stopped; {len(stopped)} running point(s) "
                      "saved a checkpoint. Run the same command with --resume to continue", signum)
    missing = [Path(cfg.out).name for i, cfg in enumerate(configs) if i not in reported]
    if failed or missing:
        raise points_failed(failed, len(configs), missing)
