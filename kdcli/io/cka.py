"""CKA results as Parquet: one row per (layer_a, layer_b, estimator), metadata linking both runs."""

from __future__ import annotations

from pathlib import Path

from kdcli.io.tables import read_rows, write_rows
from kdcli.metrics.bootstrap import CONFIDENCE

CKA_FORMAT_VERSION = "1"
COLUMNS = {  # name: (Arrow type name, meaning) — documented in the README
    "layer_a": ("string", "layer of RUN_A (module name, or NAME:in for a module's input)"),
    "layer_b": ("string", "layer of RUN_B"),
    "estimator": ("string", "linear, rbf, debiased or minibatch"),
    "value": ("float64", "the CKA estimate"),
    "ci_low": ("float64", f"lower end of the {CONFIDENCE:.0%} basic bootstrap interval (null without --bootstrap)"),
    "ci_high": ("float64", "upper end of that interval (null without --bootstrap)"),
    "n": ("int64", "rows the estimate used: samples, or token positions whose target counts"),
    "d_a": ("int64", "feature size of layer_a (flattened per row)"),
    "d_b": ("int64", "feature size of layer_b"),
    "batches": ("int64", "minibatches averaged (minibatch estimator; null for the others)"),
}


def write_cka(path: str | Path, rows: list[dict], metadata: dict) -> None:
    write_rows(path, rows, COLUMNS, metadata)


def read_cka(path: str | Path, flag: str = "--out") -> tuple[list[dict], dict]:
    """Rows and (JSON-decoded) metadata of a CKA file; anything else raises ArtifactError."""
    return read_rows(path, flag, "kdcli-cka", CKA_FORMAT_VERSION, "CKA")
