"""`report` on a synthetic tree of 2,000 runs: time to scan, pair, aggregate and write.

    python benchmarks/report.py [--runs 2000]

Run dirs hold realistic run.json files (copied from a real kdcli student run's
structure, with κ, seed, τ and accuracy varied). Prints the median of 3 timings,
with and without plots; then again with a predictions file in every run (`--rows` test
rows × 10 classes, float16, as MNIST-1D's main job has: 4,000), which adds the bias-variance
decomposition. Goal: under 10 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from kdcli.stages import report


def write_predictions(d: Path, run: dict, rows: int, rng: np.random.Generator) -> None:
    from safetensors.numpy import save_file

    logits = rng.normal(0, 2, (rows, 10))
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    save_file({"log_probs": lp.astype(np.float16), "targets": (np.arange(rows) % 10).astype(np.int64),
               "rows": np.arange(rows, dtype=np.int64)}, str(d / "predictions.safetensors"),
              metadata={"format": "kdcli-predictions", "format_version": "1", "run_id": run["run_id"]})
    run["artifacts"]["predictions.safetensors"] = "not hashed (report checks sizes by default)"


def make_tree(root: Path, n_runs: int, rows: int = 0) -> None:
    rng = np.random.default_rng(0)
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
                    if rows:
                        write_predictions(d, run, rows, rng)
                    (d / "run.json").write_text(json.dumps(run, indent=2))
                    i += 1
        seed += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=4000, help="test rows per predictions file")
    args = parser.parse_args()
    for rows in (0, args.rows):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "runs"
            make_tree(root, args.runs, rows)
            for plots in (False, True):
                times = []
                for r in range(3):
                    t = time.perf_counter()
                    res = report.run(report.ReportConfig(root=str(root), out=str(Path(tmp) / f"rep{r}"),
                                                         plots=plots))
                    times.append(time.perf_counter() - t)
                pairs = sum(row["pairs"] for row in res.rows)
                variance = sum(len(k.variance_rows) for k in res.kinds)
                print(f"{args.runs} runs, {pairs} pairs, {len(res.rows)} rows, predictions of {rows} rows "
                      f"({variance} bias-variance rows), plots={plots}: median {statistics.median(times):.2f} s "
                      f"(runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
