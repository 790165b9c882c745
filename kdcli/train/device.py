"""Device selection and the CPU thread count."""

from __future__ import annotations

import os

import torch

from kdcli.errors import ConfigError

# Measured with benchmarks/threads.py on 2 shared cores: models below about a
# million parameters at batch 128 run 1.3–2× faster on one thread than on two
# (the per-op threading overhead dominates tiny kernels); bigger ones gain from more.
SMALL_MODEL_PARAMS = 1_000_000


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def choose_threads(model: torch.nn.Module, requested: int | None) -> int:
    """--threads if given; otherwise 1 for small models, else all cores this process may use."""
    if requested is not None:
        return requested
    params = sum(p.numel() for p in model.parameters())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if params < SMALL_MODEL_PARAMS else cores
