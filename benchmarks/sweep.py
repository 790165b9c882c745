"""Sweep throughput on this machine: the thread default under contention, and runs per hour
of the main job's student in each sweep mode.

    python benchmarks/sweep.py --teacher runs/kappa_sweep/teacher [--steps 1500] [--repeats 3]
                               [--section threads|modes|main|all]

threads: one label-trained student (the main job's: cnn1d, κ = 1, --steps steps) as its own
         process with --threads 1, the default and --threads 2, alone and beside one competing
         process (a busy loop on one core), alternating, median of --repeats.
modes:   --points students (κ = 1, seeds 0…) run one process per run, all in one process
         (--task-index all), over 2 workers × 1 thread (--workers 2), and as one stack of seeds
         (--stack-seeds): wall time and runs per hour.
main:    the main job (make demo's examples/kappa_sweep.sh) end to end, one process per run
         (examples/_common.sh `sweep_pairs`, as before) and as shipped (`sweep_students`),
         one after the other, with whether the PI tables are the same and the students bit
         for bit the same. (--teacher is not used: each builds its own.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KDCLI = str(Path(sys.executable).parent / "kdcli")


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def student(teacher: str, out: Path, steps: int, *extra: str) -> list[str]:
    return [KDCLI, "train-labels", "--teacher", teacher, "--out", str(out), "--kappa", "1", "--steps",
            str(steps), "--eval-every", "0", "--checkpoint-every", "0", "--quiet", "--overwrite", *extra]


class Competitor:
    """One busy process on one core, as another user's job would be."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def threads_section(args, tmp: Path) -> None:
    cases = [("--threads 1", ["--threads", "1"], {}), ("default", [], {}), ("--threads 2", ["--threads", "2"], {})]
    print(f"threads: one student (cnn1d, κ = 1, {args.steps} steps) per process, seconds end to end, "
          f"median of {args.repeats}")
    print(f"{'case':<14} {'alone':>8} {'beside 1 busy process':>22}")
    for name, extra, env in cases:
        row = []
        for busy in (False, True):
            times = []
            for _ in range(args.repeats):
                cmd = student(args.teacher, tmp / "t", args.steps, *extra)
                if busy:
                    with Competitor():
                        times.append(timed(cmd, env))
                else:
                    times.append(timed(cmd, env))
            row.append(statistics.median(times))
        print(f"{name:<14} {row[0]:>8.1f} {row[1]:>22.1f}", flush=True)


def modes_section(args, tmp: Path) -> None:
    grid = ["--grid", f"seed={','.join(str(s) for s in range(args.points))}"]
    print(f"modes: {args.points} students (cnn1d, κ = 1, {args.steps} steps), wall time and runs per hour")
    rows = []
    for name in ("one process per run", "all points in one process", "2 workers × 1 thread",
                 f"stacked seeds (a stack of {args.points})"):
        out = tmp / name.replace(" ", "_")
        start = time.perf_counter()
        if name.startswith("one process"):
            for i in range(args.points):
                subprocess.run(student(args.teacher, out, args.steps, "--threads", "1", *grid, "--task-index",
                                       str(i)), check=True, stdout=subprocess.DEVNULL)
        elif name.startswith("all points"):
            subprocess.run(student(args.teacher, out, args.steps, "--threads", "1", *grid, "--task-index", "all"),
                           check=True, stdout=subprocess.DEVNULL)
        elif name.startswith("2 workers"):
            subprocess.run(student(args.teacher, out, args.steps, "--threads", "1", *grid, "--task-index", "all",
                                   "--workers", "2"), check=True, stdout=subprocess.DEVNULL)
        else:
            subprocess.run(student(args.teacher, out, args.steps, "--threads", "1", *grid, "--task-index", "all",
                                   "--stack-seeds"), check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        rows.append((name, seconds))
        print(f"{name:<28} {seconds:>7.1f} s {3600 * args.points / seconds:>8.0f} runs/h "
              f"{rows[0][1] / seconds:>5.2f}×", flush=True)


def main_section(args, tmp: Path) -> None:
    import json

    from safetensors.torch import load_file

    examples = Path(__file__).resolve().parents[1] / "examples"
    body = {"one process per run": "setup_teacher; sweep_pairs", "as shipped": "setup_teacher; sweep_students"}
    print("main: the main job end to end (teacher, 30 students, report), seconds")
    seconds = {}
    for name, steps in body.items():
        out = tmp / name.replace(" ", "_")
        env = {**os.environ, "OUT": str(out), "KDCLI": KDCLI}
        start = time.perf_counter()
        subprocess.run(["bash", "-c", f"source {examples}/_common.sh; {steps}; $KDCLI report $OUT --out $OUT/report "
                        "> /dev/null"], env=env, check=True, stdout=subprocess.DEVNULL)
        seconds[name] = time.perf_counter() - start
        print(f"{name:<22} {seconds[name]:>7.1f} s", flush=True)
    a, b = (tmp / n.replace(" ", "_") for n in body)
    print(f"speed-up {seconds['one process per run'] / seconds['as shipped']:.2f}×")
    pi = [[{k: v for k, v in row.items() if k != "teacher"}  # the teacher's run id differs
           for row in json.loads((d / "report" / "report.json").read_text())["pi_vs_kappa"]] for d in (a, b)]
    models = sorted(p.relative_to(a) for p in a.rglob("model.safetensors"))
    same = [all((x == y).all() for x, y in zip(load_file(a / m).values(), load_file(b / m).values()))
            for m in models]
    print(f"same PI table: {pi[0] == pi[1]}; runs bit for bit the same: {sum(same)} of {len(models)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", help="a teacher run dir, for threads and modes (make demo's: "
                        "runs/kappa_sweep/teacher)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--section", choices=("threads", "modes", "main", "all"), default="all")
    args = parser.parse_args()
    if args.section != "main" and not args.teacher:
        parser.error("--teacher is needed for the threads and modes sections")
    tmp = Path(tempfile.mkdtemp(prefix="kdcli-sweep-bench-"))
    try:
        if args.section in ("threads", "all"):
            threads_section(args, tmp)
        if args.section in ("modes", "all"):
            modes_section(args, tmp)
        if args.section in ("main", "all"):
            main_section(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
