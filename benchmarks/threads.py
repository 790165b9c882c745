"""Training-step time on 1 thread vs all cores, per model: the basis of the --threads default.

    python benchmarks/threads.py [--steps 60]

Prints the median ms per step (forward + backward + AdamW) of each model at
batch 128 on its natural input, with 1 thread and with all cores, measured
alternately in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from kdcli.models import build_model, resolve_model_args

CASES = [("mlp", (1, 40)), ("cnn1d", (1, 40)), ("cnn", (3, 32, 32)), ("resnet20", (3, 32, 32))]


def step_times(model, x, y, steps: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[steps // 5:]  # drop warm-up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{'model':10} {'params':>10} {'1 thread ms':>12} {f'{cores} threads ms':>13} {'ratio':>6}")
    for name, shape in CASES:
        model = build_model(name, **resolve_model_args(name, 10, shape))
        x, y = torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,))
        steps = args.steps if len(shape) == 2 else max(10, args.steps // 4)
        results = {1: [], cores: []}
        for _ in range(3):  # alternate so both see the same machine load
            for threads in results:
                torch.set_num_threads(threads)
                results[threads] += step_times(model, x, y, steps)
        one, many = (statistics.median(results[t]) * 1e3 for t in (1, cores))
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:10} {params:>10,} {one:>12.2f} {many:>13.2f} {one / many:>6.2f}")


if __name__ == "__main__":
    main()
