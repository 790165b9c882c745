"""On-disk cache for generated or decoded arrays (npz, never pickle)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdcli.errors import ArtifactError
from kdcli.io.atomic import atomic_path


def cache_dir() -> Path:
    """$KDCLI_CACHE_DIR, else $XDG_CACHE_HOME/kdcli, else ~/.cache/kdcli."""
    if env := os.environ.get("KDCLI_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdcli"


def cached_arrays(key: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays stored under `key`, made and written (atomically) on first use."""
    path = cache_dir() / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception:  # noqa: BLE001  truncated zips, bad headers, ...: rebuilt below
            pass
    arrays = make()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    except (OSError, ArtifactError):  # atomic_path reports a failed write as ArtifactError
        pass  # an unwritable cache only costs time
    return arrays
