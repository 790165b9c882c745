"""Device selection and the CPU thread count."""

from __future__ import annotations

import os

import torch

from kdcli.errors import ConfigError

# Measured with benchmarks/threads.py on an idle 2-core machine: two threads beat
# one even for the tiny MNIST-1D models (cnn1d 8k params: 1.93 vs 2.31 ms per
# step; resnet20: 306 vs 544 ms), so a run takes every core it may use. When
# running several runs side by side on few cores, pass --threads 1 to each.


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def choose_threads(requested: int | None) -> int:
    """--threads if given, else what slurm gave the task ($SLURM_CPUS_PER_TASK; without
    --cpus-per-task, $SLURM_CPUS_ON_NODE, the CPUs of this job on this node), else every core
    this process may use (its affinity mask, which slurm's task/affinity and cgroup plugins
    narrow to the task's CPUs)."""
    if requested is not None:
        return requested
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return min(int(value), usable)
    return usable


def use_device(name: str, threads: int | None) -> torch.device:
    """The device a run computes on; on the CPU, with its thread count set first."""
    device = select_device(name)
    if device.type == "cpu":
        torch.set_num_threads(choose_threads(threads))
    return device
