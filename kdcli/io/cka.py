"""CKA results as Parquet: one row per (layer_a, layer_b, estimator), metadata linking both runs."""

from __future__ import annotations

from pathlib import Path

from kdcli.errors import ArtifactError
from kdcli.io.meta import decode
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
    import pyarrow as pa

    from kdcli.io.tables import write_table


    types = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    columns = {k: pa.array([r[k] for r in rows], type=types[t]) for k, (t, _) in COLUMNS.items()}
    write_table(path, columns, metadata)


def read_cka(path: str | Path, flag: str = "--out") -> tuple[list[dict], dict]:
    """Rows and (JSON-decoded) metadata of a CKA file; anything else raises ArtifactError."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except Exception as exc:  # pyarrow raises several types for what is not Parquet
        raise ArtifactError(f"{flag} {path}: not a readable Parquet file ({exc})") from None
    meta = decode(table.schema.metadata or {})
    if meta.get("format") != "kdcli-cka":
        raise ArtifactError(f"{flag} {path}: not a kdcli CKA file")
    if str(meta.get("format_version")) != CKA_FORMAT_VERSION:
        raise ArtifactError(f"{flag} {path}: CKA format version {meta.get('format_version')}, "
                            f"this kdcli reads version {CKA_FORMAT_VERSION}")
    return table.to_pylist(), meta
