"""Run directories: layout, status, and the one reader of completed runs (stages, cka and
report all read run dirs through `read_run` / `load_run_json` / `scan`).

    RUN/model.safetensors   weights + header metadata
    RUN/metrics.parquet     one row per evaluation
    RUN/subset.parquet      the κ subset's sample ids, in subset order
    RUN/run.json            config, final metrics, provenance — written last (completion marker)
    RUN/checkpoint.*        resumable training state; removed when the run completes
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kdcli.errors import ArtifactError
from kdcli.io.hashing import sha256_file

RUN_FORMAT_VERSION = 2  # 2: records `task` and `recipe`; metrics rows per evaluation, by step
READABLE_VERSIONS = (1, 2)  # version 1 runs are classification (Task.from_record)
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


def load_run_json(path: str | Path, flag: str) -> dict:
    """The parsed run.json of a run dir (with `dir` added), or ArtifactError saying what is wrong."""
    path = Path(path)
    marker = path / RUN_JSON
    try:
        run = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{flag} {marker}: unreadable run.json ({exc})") from None
    if not isinstance(run, dict) or run.get("format") != "kdcli-run" or not isinstance(run.get("config"), dict):
        raise ArtifactError(f"{flag} {marker}: not a kdcli run.json")
    if run.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{flag} {marker}: run format version {run.get('format_version')}, "
                            f"this kdcli reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    from kdcli.task import Task

    Task.from_record(run.get("task"), where=f"{flag} {marker}")  # a malformed task: damaged
    missing = [name for name in run.get("artifacts", {}) if not (path / name).is_file()]
    if missing:
        raise ArtifactError(f"{flag} {path}: {', '.join(missing)} missing (the run dir is damaged; "
                            "rerun it with --overwrite)")
    run["dir"] = str(path.resolve())
    return run


def read_run(path: str | Path, *, flag: str = "--teacher", verify: bool = True) -> dict:
    """run.json of a completed run, after checking its weights still match their recorded hash."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{flag} {path}: no such run directory")
    if not (path / RUN_JSON).is_file():
        what = "an incomplete kdcli run (no run.json; resume it with --resume)" \
            if run_status(path) == "partial" else "not a kdcli run directory (no run.json)"
        raise ArtifactError(f"{flag} {path}: {what}")
    run = load_run_json(path, flag)
    if verify:
        weights = path / MODEL_FILE
        if sha256_file(weights) != run["artifacts"][MODEL_FILE]:
            raise ArtifactError(f"{flag} {weights}: sha256 does not match the one in run.json "
                                "(the checkpoint was modified, truncated or replaced)")
    return run


@dataclass
class Found:
    """What `scan` found under a root."""

    runs: list[dict] = field(default_factory=list)  # completed runs' run.json (with `dir`)
    incomplete: list[str] = field(default_factory=list)  # run dirs without run.json
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of runs not read
    cka_files: list[str] = field(default_factory=list)


def scan(root: str | Path) -> Found:
    """Every completed run under root (recursively), run dirs that have no run.json, run dirs
    that cannot be read (listed with the reason, never skipped silently), and CKA files.
    Reads run.json files only (plus a stat of each artifact), so it stays fast on thousands."""
    found = Found()
    for dirpath, _dirs, files in os.walk(root):
        if RUN_JSON in files:
            try:
                found.runs.append(load_run_json(dirpath, "run"))
            except ArtifactError as exc:
                found.damaged.append((dirpath, str(exc)))
        elif {CKPT_STATE, MODEL_FILE, METRICS_FILE} & set(files):
            found.incomplete.append(dirpath)
        found.cka_files += [os.path.join(dirpath, f) for f in files
                            if f.endswith(".parquet") and f.startswith("cka")]
    return found
