"""Run directories: layout, status, and reading a completed run back.

    RUN/model.safetensors   weights + header metadata
    RUN/metrics.parquet     one row per epoch
    RUN/subset.parquet      the κ subset's sample ids, in subset order
    RUN/run.json            config, final metrics, provenance — written last (completion marker)
    RUN/checkpoint.*        resumable training state; removed when the run completes
"""

from __future__ import annotations

import json
from pathlib import Path

from kdcli.errors import ArtifactError
from kdcli.io.hashing import sha256_file

RUN_FORMAT_VERSION = 1
RUN_JSON = "run.json"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.parquet"
SUBSET_FILE = "subset.parquet"
CKPT_TENSORS = "checkpoint.safetensors"
CKPT_STATE = "checkpoint.json"


def run_status(path: str | Path) -> str:
    """'new' (absent or empty), 'complete', 'partial' (resumable kdcli run) or 'foreign'."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return "new"
    if not path.is_dir():
        return "foreign"
    if (path / RUN_JSON).is_file():
        return "complete"
    if (path / CKPT_STATE).is_file() or (path / MODEL_FILE).is_file() or (path / METRICS_FILE).is_file():
        return "partial"
    return "foreign"


def read_run(path: str | Path, *, flag: str = "--teacher", verify: bool = True) -> dict:
    """run.json of a completed run, after checking its weights still match their recorded hash."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{flag} {path}: no such run directory")
    marker = path / RUN_JSON
    if not marker.is_file():
        what = "an incomplete kdcli run (no run.json; resume it with --resume)" \
            if run_status(path) == "partial" else "not a kdcli run directory (no run.json)"
        raise ArtifactError(f"{flag} {path}: {what}")
    try:
        run = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{flag} {marker}: unreadable run.json ({exc})") from None
    if not isinstance(run, dict) or run.get("format") != "kdcli-run":
        raise ArtifactError(f"{flag} {marker}: not a kdcli run.json")
    if run.get("format_version") != RUN_FORMAT_VERSION:
        raise ArtifactError(f"{flag} {marker}: run format version {run.get('format_version')}, "
                            f"this kdcli reads version {RUN_FORMAT_VERSION}")
    if verify:
        weights = path / MODEL_FILE
        if not weights.is_file():
            raise ArtifactError(f"{flag} {path}: {MODEL_FILE} is missing")
        expected = run["artifacts"][MODEL_FILE]
        if sha256_file(weights) != expected:
            raise ArtifactError(f"{flag} {weights}: sha256 does not match the one in run.json "
                                "(the checkpoint was modified, truncated or replaced)")
    run["dir"] = str(path.resolve())
    return run
