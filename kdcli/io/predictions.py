"""A run's test predictions (RUN/predictions.safetensors): what `report` decomposes into bias
and variance across seeds.

    log_probs  [R, V] float16  log-softmax of the model's logits (floored at float16's lowest
                               value: finite unless the model's outputs were NaN)
    targets    [R]    int64    the true class (next token) of each row
    rows       [R]    int64    which test rows: the sample's position in the test split for
                               classification (every sample); for sequence tasks the flat
                               position (sample · tokens per sample + t) of a fixed sample of
                               counted positions, the same in every run on that test split

The header carries the format, the producing run's id, the dataset fingerprint, the model and
how the rows were chosen. Written by kdcli.stages.rundir; read here with numpy only (`report`
never imports torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdcli.errors import ArtifactError

PREDICTIONS_FORMAT_VERSION = "1"


@dataclass
class Predictions:
    log_probs: np.ndarray  # [R, V] float16
    targets: np.ndarray  # [R] int64
    rows: np.ndarray  # [R] int64
    meta: dict


def predictions_meta(*, run_id: str, dataset_fingerprint: str, model_name: str, model_args: dict,
                     kind: str, sample: str, inputs: dict) -> dict:
    """The header of a predictions file; `sample` says which test rows it keeps."""
    return {"format": "kdcli-predictions", "format_version": PREDICTIONS_FORMAT_VERSION, "run_id": run_id,
            "dataset_fingerprint": dataset_fingerprint, "model_name": model_name, "model_args": model_args,
            "split": "test", "task_kind": kind, "rows": sample, "inputs": inputs}


def read_predictions(path: str | Path) -> Predictions:
    """Read and check a predictions file; anything wrong raises ArtifactError naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found (expected a kdcli predictions file)")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged headers/bodies
        raise ArtifactError(f"{path}: not a readable safetensors file, it may be truncated or corrupt "
                            f"({exc})") from None
    if meta.get("format") != "kdcli-predictions":
        raise ArtifactError(f"{path}: not a kdcli predictions file (header format {meta.get('format')!r})")
    if meta.get("format_version") != PREDICTIONS_FORMAT_VERSION:
        raise ArtifactError(f"{path}: predictions format version {meta.get('format_version')!r}, this kdcli "
                            f"reads version {PREDICTIONS_FORMAT_VERSION}")
    expected = {"log_probs": (np.float16, 2), "targets": (np.int64, 1), "rows": (np.int64, 1)}
    for name, (dtype, ndim) in expected.items():
        t = tensors.get(name)
        if t is None or t.dtype != dtype or t.ndim != ndim:
            got = "missing" if t is None else f"{t.dtype} with {t.ndim} dimensions"
            raise ArtifactError(f"{path}: tensor {name!r} is {got}, expected {np.dtype(dtype)} with "
                                f"{ndim} dimension{'s' if ndim > 1 else ''}")
    n = len(tensors["rows"])
    if len(tensors["log_probs"]) != n or len(tensors["targets"]) != n:
        raise ArtifactError(f"{path}: log_probs, targets and rows hold different numbers of rows "
                            f"({len(tensors['log_probs'])}, {len(tensors['targets'])}, {n})")
    v = tensors["log_probs"].shape[1]
    if n and (tensors["targets"].min() < 0 or tensors["targets"].max() >= v):
        raise ArtifactError(f"{path}: targets outside 0..{v - 1}")
    for key in ("model_args", "inputs"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return Predictions(tensors["log_probs"], tensors["targets"], tensors["rows"], meta)
