"""Training-loop overhead: steps/s of `train-labels` vs a bare PyTorch loop, same math, same data.

    python benchmarks/train_loop.py [--repeats 5] [--steps 600]

Both train cnn1d (32 channels) on a κ = 1 subset of the embedded MNIST-1D
(10,000 samples) with AdamW, cosine lr, batch 128, on one CPU thread, and
are run alternately so both see the same machine load. kdcli's figure covers
its whole loop (batch gather, per-step lr, loss, backward, step, metrics
bookkeeping); evaluation and checkpoints happen outside the timed steps.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from _timing import StepTimer, median  # benchmarks/ is on sys.path when run as a script

from kdcli.config import TrainConfig
from kdcli.data import build_dataset, kappa_subset
from kdcli.models import build_model, resolve_model_args
from kdcli.stages import train

DATA = {"n_train": 10000, "n_test": 2000}


def bare_loop(steps: int, seed: int) -> float:
    data = build_dataset("mnist1d", DATA)
    x, y = kappa_subset(data, 1.0, 0).split.x, kappa_subset(data, 1.0, 0).split.y
    torch.manual_seed(seed)
    model = build_model("cnn1d", **resolve_model_args("cnn1d", 10, (1, 40), {"channels": 32}))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    perm, b, times = torch.randperm(len(y), generator=gen), 0, []
    for step in range(steps):
        if (b + 1) * 128 > len(y) + 127:
            perm, b = torch.randperm(len(y), generator=gen), 0
        idx = perm[b * 128:(b + 1) * 128]
        b += 1
        for g in opt.param_groups:
            g["lr"] = 0.5 * 3e-3 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    return (steps - 1) / (times[-1] - times[0])


def kdcli_loop(steps: int, seed: int, root: str) -> float:
    timer = StepTimer()
    cfg = TrainConfig(out=os.path.join(root, f"run{seed}-{time.time_ns()}"), dataset="mnist1d",
                      dataset_args=DATA, model="cnn1d", model_args={"channels": 32}, steps=steps,
                      epochs=None, lr=3e-3, threads=1, device="cpu", eval_every="0")
    train.run(cfg, progress=timer)
    return timer.rate()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as root:
        kdcli_loop(50, 0, root)  # warm the dataset cache and the allocator
        for r in range(args.repeats):
            bare.append(bare_loop(args.steps, r))
            ours.append(kdcli_loop(args.steps, r, root))
    b, k = median(bare), median(ours)
    print(f"cnn1d/MNIST-1D, batch 128, {args.steps} steps, 1 thread, {args.repeats} alternating repeats")
    print(f"bare PyTorch loop : {b:8.1f} steps/s (median; runs: {', '.join(f'{v:.0f}' for v in bare)})")
    print(f"kdcli train-labels: {k:8.1f} steps/s (median; runs: {', '.join(f'{v:.0f}' for v in ours)})")
    print(f"overhead ratio bare/kdcli: {b / k:.3f}  (goal ≤ 1.2)")


if __name__ == "__main__":
    main()
