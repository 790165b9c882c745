"""Run directories: layout, the states a run dir can be in, and the one reader of completed
runs (stages, cka and report all read run dirs through `inspect` / `read_run` / `scan`).

    RUN/model.safetensors       weights + header metadata
    RUN/metrics.parquet         one row per evaluation
    RUN/subset.parquet          the κ subset's sample ids, in subset order
    RUN/predictions.safetensors test predictions (log-probabilities, float16; kdcli.io.predictions)
    RUN/run.json                config, final metrics, artifact hashes, provenance — written
                                last (the completion marker)
    RUN/checkpoint.safetensors  resumable training state (one atomic file); removed when the
                                run completes
    RUN/.kdcli-XXXXXXXX.tmp     a write in progress (left behind only by a kill)
    RUN/.kdcli-lock             locked by the process writing the run dir

States (`inspect`), whatever moment a kill came at: new (absent or empty), in-progress
(kdcli files but no run.json; resumable when it holds a checkpoint), complete (run.json
whose artifacts check out), damaged (run.json that cannot be read, or an artifact missing
or not matching its recorded size or sha256), foreign (not empty, and nothing of kdcli's).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kdcli.errors import ArtifactError
from kdcli.io.atomic import is_temporary
from kdcli.io.hashing import sha256_file

RUN_FORMAT_VERSION = 2  # 2: records `task`, `recipe` and `artifact_bytes`; metrics rows per evaluation
READABLE_VERSIONS = (1, 2)  # version 1 runs are classification (Task.from_record)
RUN_JSON = "run.json"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.parquet"
SUBSET_FILE = "subset.parquet"
PREDICTIONS_FILE = "predictions.safetensors"
CKPT_TENSORS = "checkpoint.safetensors"
LEGACY_CKPT_STATE = "checkpoint.json"  # kdcli 0.1's second checkpoint file
LOCK_FILE = ".kdcli-lock"  # held (flock) by the process writing the run dir
KDCLI_FILES = (RUN_JSON, MODEL_FILE, METRICS_FILE, SUBSET_FILE, PREDICTIONS_FILE, CKPT_TENSORS, LEGACY_CKPT_STATE)
REQUIRED = {"stage": str, "config": dict, "dataset": dict, "model": dict, "subset": dict, "final": dict,
            "artifacts": dict}


@dataclass
class RunDir:
    state: str  # new, in-progress, complete, damaged or foreign
    run: dict | None = None  # complete: its run.json
    why: str = ""  # damaged: what is wrong
    resumable: bool = False  # in-progress: it holds a checkpoint


def inspect(path: str | Path, *, verify: str = "hash") -> RunDir:
    """What a run dir is. A complete run's artifacts are checked against run.json: `hash`
    (sha256 of every file), `size` (presence and byte size: cheap) or `none` (presence)."""
    path = Path(path)
    if not path.exists():
        return RunDir("new")
    if not path.is_dir():
        return RunDir("foreign")
    names = {p.name for p in path.iterdir()}
    if not names:
        return RunDir("new")
    if not made_by_kdcli(path, names):
        return RunDir("foreign")
    if RUN_JSON in names:
        try:
            run = load_run_json(path, "--out")
            verify_artifacts(path, run, verify, "--out")
        except ArtifactError as exc:
            return RunDir("damaged", why=str(exc))
        return RunDir("complete", run)
    return RunDir("in-progress", resumable=CKPT_TENSORS in names or LEGACY_CKPT_STATE in names)


def made_by_kdcli(path: Path, names: set[str]) -> bool:
    """Whether kdcli made this folder: its lock file or temporary files, or a run.json or
    checkpoint, weights or table file whose own metadata says kdcli. A file name alone is not
    enough (other tools write model.safetensors and run.json too), so other programs' folders
    are never cleared."""
    if LOCK_FILE in names or any(is_temporary(n) for n in names):
        return True
    if RUN_JSON in names:
        try:
            if json.loads((path / RUN_JSON).read_text()).get("format") == "kdcli-run":
                return True
        except (OSError, ValueError, AttributeError):
            pass
    for name in (CKPT_TENSORS, MODEL_FILE):
        if name in names and _safetensors_format(path / name).startswith("kdcli-"):
            return True
    return False


def _safetensors_format(path: Path) -> str:
    """The `format` in a safetensors file's header metadata ('' when unreadable)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100 * 2**20:
                return ""
            header = json.loads(f.read(size))
        return str((header.get("__metadata__") or {}).get("format", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def verify_artifacts(path: str | Path, run: dict, how: str, flag: str) -> None:
    """Check a run's files against what run.json recorded (see `inspect`)."""
    sizes = run.get("artifact_bytes", {})
    for name, sha in run.get("artifacts", {}).items():
        f = Path(path) / name
        if not f.is_file():
            raise ArtifactError(f"{flag} {path}: {name} is missing (the run dir is damaged; redo it "
                                "with --overwrite)")
        if how in ("size", "hash") and name in sizes and f.stat().st_size != sizes[name]:
            raise ArtifactError(f"{flag} {f}: {f.stat().st_size} bytes, run.json recorded {sizes[name]} "
                                "(truncated or replaced; redo the run with --overwrite)")
        if how == "hash" and sha256_file(f) != sha:
            raise ArtifactError(f"{flag} {f}: sha256 does not match the one in run.json (modified, "
                                "truncated or replaced; redo the run with --overwrite)")


def load_run_json(path: str | Path, flag: str) -> dict:
    """The parsed run.json of a run dir (with `dir` added), or ArtifactError saying what is wrong."""
    path = Path(path)
    marker = path / RUN_JSON
    try:
        run = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{flag} {marker}: unreadable run.json ({exc})") from None
    if not isinstance(run, dict) or run.get("format") != "kdcli-run":
        raise ArtifactError(f"{flag} {marker}: not a kdcli run.json")
    bad = [k for k, kind in REQUIRED.items() if not isinstance(run.get(k), kind)]
    if not isinstance(run.get("artifact_bytes", {}), dict):
        bad.append("artifact_bytes")
    if bad:
        raise ArtifactError(f"{flag} {marker}: a kdcli run.json without {', '.join(bad)} (damaged)")
    if run.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{flag} {marker}: run format version {run.get('format_version')}, "
                            f"this kdcli reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    from kdcli.task import Task

    Task.from_record(run.get("task"), where=f"{flag} {marker}")  # a malformed task: damaged
    run["dir"] = str(path.resolve())
    return run


def read_run(path: str | Path, *, flag: str = "--teacher", verify: bool = True) -> dict:
    """run.json of a completed run, used as an input: its weights are checked against their
    recorded sha256 (`verify`), every other artifact for presence and size."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{flag} {path}: no such run directory")
    if not (path / RUN_JSON).is_file():
        what = "an incomplete kdcli run (no run.json; resume it with --resume)" \
            if inspect(path).state == "in-progress" else "not a kdcli run directory (no run.json)"
        raise ArtifactError(f"{flag} {path}: {what}")
    run = load_run_json(path, flag)
    if MODEL_FILE not in run["artifacts"]:
        raise ArtifactError(f"{flag} {path / RUN_JSON}: records no {MODEL_FILE} (damaged)")
    verify_artifacts(path, run, "size", flag)
    if verify:
        weights = path / MODEL_FILE
        if sha256_file(weights) != run["artifacts"][MODEL_FILE]:
            raise ArtifactError(f"{flag} {weights}: sha256 does not match the one in run.json "
                                "(the checkpoint was modified, truncated or replaced)")
    return run


def check_teacher_link(run: dict, where) -> None:
    """A student's data and its teacher's (run.json `dataset.fingerprint` and
    `teacher.dataset_fingerprint`) are the same dataset unless the run was made with
    --cross-dataset, and then they differ; runs made before the teacher's fingerprint was
    recorded pass."""
    recorded = (run.get("teacher") or {}).get("dataset_fingerprint")
    if recorded is None:
        return
    cross = bool(run["config"].get("cross_dataset"))
    if (recorded != run["dataset"]["fingerprint"]) != cross:
        what = ("says --cross-dataset, but its teacher was trained on the same dataset" if cross else
                "has a teacher trained on another dataset, but was not made with --cross-dataset")
        raise ArtifactError(f"run {where}: {RUN_JSON} {what} (edited or damaged)")


@dataclass
class Found:
    """What `scan` found under a root."""

    runs: list[dict] = field(default_factory=list)  # completed runs' run.json (with `dir`)
    incomplete: list[str] = field(default_factory=list)  # run dirs without run.json
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of runs not read
    cka_files: list[str] = field(default_factory=list)
    collapse_files: list[str] = field(default_factory=list)


def scan(root: str | Path, verify: str = "size") -> Found:
    """Every completed run under root (recursively), run dirs that have no run.json, run dirs
    that are damaged (listed with the reason, never skipped silently), and CKA and collapse files. Reads
    run.json files and, by default, checks each artifact's presence and size (`verify`: see
    `inspect`), so it stays fast on thousands of runs; `hash` reads every file."""
    found = Found()
    for dirpath, _dirs, files in os.walk(root):
        if RUN_JSON in files:
            try:
                run = load_run_json(dirpath, "run")
                verify_artifacts(dirpath, run, verify, "run")
                check_teacher_link(run, dirpath)
                found.runs.append(run)
            except ArtifactError as exc:
                found.damaged.append((dirpath, str(exc)))
        elif set(KDCLI_FILES) & set(files):
            found.incomplete.append(dirpath)
        found.cka_files += [os.path.join(dirpath, f) for f in files
                            if f.endswith(".parquet") and f.startswith("cka")]
        found.collapse_files += [os.path.join(dirpath, f) for f in files
                                 if f.endswith(".parquet") and f.startswith("collapse")]
    return found
