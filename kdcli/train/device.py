"""Device selection and the CPU thread count."""

from __future__ import annotations

import os

import torch

from kdcli.errors import ConfigError

# The default is one thread outside slurm. Measured with benchmarks/sweep.py (threads) on this
# 2-core machine, the main job's student (cnn1d, 1,500 steps, end to end): alone, 1 thread
# 7.7 s and 2 threads 6.4 s; beside one busy process, 1 thread 8.0 s and 2 threads 18.6-22.4 s.
# Two threads on a shared core wait for each other at every parallel region (the descheduled
# one holds the barrier); OMP_WAIT_POLICY does not help (PASSIVE: 13.8 s alone, 23.2 s beside
# the busy process). One thread is never much slower, more threads can be several times slower;
# a large model on an idle machine gains from --threads N (resnet20: 306 vs 544 ms per step on
# 2 threads vs 1, benchmarks/threads.py). Under slurm the task owns the CPUs it was given.


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


def affinity_cores() -> int:
    """The cores this process may run on (its affinity mask)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def slurm_cpus() -> int | None:
    """The CPUs slurm gave this task ($SLURM_CPUS_PER_TASK; without --cpus-per-task,
    $SLURM_CPUS_ON_NODE, the job's CPUs on this node), never more than the affinity mask
    allows; None outside slurm."""
    usable = affinity_cores()
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return min(int(value), usable)
    return None


def choose_threads(requested: int | None) -> int:
    """--threads if given, else what slurm gave the task, else one."""
    if requested is not None:
        return requested
    return slurm_cpus() or 1


def use_device(name: str, threads: int | None) -> torch.device:
    """The device a run computes on; on the CPU, with its thread count set first. Under
    torchrun each CUDA process takes the GPU of its LOCAL_RANK."""
    from kdcli.train.distributed import device_for

    device = select_device(device_for(name))
    if device.type == "cpu":
        torch.set_num_threads(choose_threads(threads))
    return device
