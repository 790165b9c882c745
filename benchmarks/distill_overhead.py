"""Distillation overhead: time per step of offline `distill` vs `train-labels`, same data and model.

    python benchmarks/distill_overhead.py [--repeats 5] [--steps 600]

A cnn1d teacher is trained briefly on the embedded MNIST-1D (10,000 samples),
its logits dumped, then paired students (κ = 1, same seed) alternate between
the two stages; per-step times come from the loop's own progress reports.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from _timing import StepTimer, median  # benchmarks/ is on sys.path when run as a script

from kdcli.config import DistillConfig, DumpConfig, TrainConfig
from kdcli.stages import distill, dump_logits, train

DATA = {"n_train": 10000, "n_test": 2000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = dict(steps=args.steps, epochs=None, lr=3e-3, threads=1, device="cpu", eval_every="0")
    with tempfile.TemporaryDirectory() as root:
        teacher = os.path.join(root, "teacher")
        train.run(TrainConfig(out=teacher, stage="train-teacher", dataset="mnist1d", dataset_args=DATA,
                              model="cnn1d", epochs=2, threads=1, device="cpu"))
        logits = os.path.join(root, "logits.parquet")
        dump_logits.run(DumpConfig(teacher=teacher, out=logits, device="cpu"))
        times = {"train-labels": [], "distill": []}
        for r in range(args.repeats):
            for name in times:
                timer = StepTimer()
                out = os.path.join(root, f"{name}-{r}")
                if name == "distill":
                    distill.run(DistillConfig(out=out, logits=logits, tau=4.0, **common), progress=timer)
                else:
                    train.run(TrainConfig(out=out, teacher=teacher, **common), progress=timer)
                times[name].append(1e3 / timer.rate())
    lab, kd = median(times["train-labels"]), median(times["distill"])
    print(f"cnn1d/MNIST-1D, batch 128, {args.steps} steps, 1 thread, {args.repeats} alternating repeats")
    for name, values in times.items():
        print(f"{name:13}: {median(values):.3f} ms/step (median; runs: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"distillation overhead: {100 * (kd / lab - 1):+.1f}%  (goal < 10%)")


if __name__ == "__main__":
    main()
