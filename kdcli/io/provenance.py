"""Provenance: everything needed to know how an artifact was made and to rerun it."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("kdcli", "torch", "torchvision", "numpy", "pyarrow", "safetensors", "typer", "rich")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_sha() -> str | None:
    """The sha of the kdcli source tree when it is a git checkout (editable installs)."""
    src = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return None
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def provenance(*, started: str, inputs: dict[str, str] | None = None, seeds: dict | None = None) -> dict:
    """The record stored under `provenance` in run.json (and in Parquet metadata)."""
    return {
        "command": sys.argv,
        "started": started,
        "finished": now_iso(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "git_sha": git_sha(),
        "slurm": {k: v for k, v in os.environ.items() if k.startswith("SLURM_")},
        "seeds": seeds or {},
        "inputs": inputs or {},
    }
