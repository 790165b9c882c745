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
    """The sha of the kdcli source tree when kdcli runs from a git checkout (editable
    install); None otherwise, e.g. a site-packages install that merely sits inside
    some other repository."""
    src = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                                 timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != src:
        return None
    sha = git("rev-parse", "HEAD")
    if not sha:
        return None
    return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def this_attempt() -> dict:
    """The record of one attempt at a run (run.json `attempts`): when and where it started, the
    slurm job (array job_task) and slurm's restart count; the training loop fills in the rest."""
    env = os.environ
    job = env.get("SLURM_JOB_ID")
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    restarts = env.get("SLURM_RESTART_COUNT", "")
    return {"started": now_iso(), "ended": None, "outcome": "running", "first_step": 0, "last_step": 0,
            "host": socket.gethostname(), "slurm_job": job,
            "restart_count": int(restarts) if restarts.isdigit() else 0}


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
