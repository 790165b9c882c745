"""`report` on a synthetic tree of 2,000 runs: time to scan, pair, aggregate and write.

    python benchmarks/report.py [--runs 2000]

Run dirs hold realistic run.json files (copied from a real kdcli student run's
structure, with κ, seed, τ and accuracy varied). Prints the median of 3 timings,
with and without plots. Goal: under 10 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from kdcli.stages import report


def make_tree(root: Path, n_runs: int) -> None:
    kappas = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    taus = [1.0, 4.0]
    i = 0
    seed = 0
    TASK = {"kind": "classification", "outputs": 10, "subsets": "stratified",
            "metrics": ["test_loss", "test_acc"], "primary": "test_acc", "higher_is_better": True,
            "pi": "difference_points", "masked": False}
    while i < n_runs:
        for kappa in kappas:
            for tau in taus:
                for stage in ("distill", "train-labels"):
                    if i >= n_runs or (stage == "train-labels" and tau != taus[0]):
                        continue
                    cfg = {"seed": seed, "subset_seed": 0, "kappa": kappa, "lr": 3e-3, "steps": 1500,
                           "model": "cnn1d", "label_smoothing": 0.0, "out": "x", "teacher": "t"}
                    run = {"format": "kdcli-run", "format_version": 2, "run_id": f"r{i}", "stage": stage,
                           "config": cfg, "task": TASK, "artifacts": {},
                           "dataset": {"name": "mnist1d", "fingerprint": "F"},
                           "model": {"name": "cnn1d", "args": {"channels": 32}},
                           "subset": {"kappa": kappa, "size": int(kappa * 10000)},
                           "teacher": {"run_id": "T"},
                           "final": {"test_acc": 0.5 + 0.1 * (stage == "distill") + 0.001 * seed,
                                     "teacher_agreement": 0.7, "teacher_kl": 0.4},
                           "provenance": {"command": ["kdcli"] * 20, "versions": {"torch": "2.14.1"}}}
                    if stage == "distill":
                        cfg.update(tau=tau, alpha=1.0)
                        run["kd"] = {"tau": tau, "alpha": 1.0}
                    d = root / stage / f"tau{tau}" / f"k{kappa}" / f"s{seed}"
                    d.mkdir(parents=True, exist_ok=True)
                    (d / "run.json").write_text(json.dumps(run, indent=2))
                    i += 1
        seed += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        make_tree(root, args.runs)
        for plots in (False, True):
            times = []
            for r in range(3):
                t = time.perf_counter()
                res = report.run(report.ReportConfig(root=str(root), out=str(Path(tmp) / f"rep{r}"), plots=plots))
                times.append(time.perf_counter() - t)
            pairs = sum(row["pairs"] for row in res.rows)
            print(f"{args.runs} runs, {pairs} pairs, {len(res.rows)} rows, plots={plots}: "
                  f"median {statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
