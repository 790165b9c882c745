"""Small Parquet tables (metrics, subsets) with kdcli schema metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdcli.io.atomic import atomic_path
from kdcli.io.meta import encode


def write_table(path: str | Path, columns: dict[str, list | np.ndarray], metadata: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    table = table.replace_schema_metadata(encode(metadata))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)


def write_rows(path: str | Path, rows: list[dict], columns: dict[str, tuple[str, str]], metadata: dict) -> None:
    """Result rows as typed columns (`columns`: name -> (Arrow type name, meaning)): CKA and
    collapse files."""
    import pyarrow as pa

    types = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    write_table(path, {k: pa.array([r[k] for r in rows], type=types[t]) for k, (t, _) in columns.items()}, metadata)


def read_rows(path: str | Path, flag: str, fmt: str, version: str, what: str,
              columns: dict | None = None) -> tuple[list[dict], dict]:
    """Rows and (JSON-decoded) metadata of a kdcli result file of format `fmt` (`what` names it
    in errors: "CKA"), checked for its format, version and, given `columns`, every column;
    anything else raises ArtifactError."""
    import pyarrow.parquet as pq

    from kdcli.errors import ArtifactError
    from kdcli.io.meta import decode

    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except Exception as exc:  # pyarrow raises several types for what is not Parquet
        raise ArtifactError(f"{flag} {path}: not a readable Parquet file ({exc})") from None
    meta = decode(table.schema.metadata or {})
    if meta.get("format") != fmt:
        raise ArtifactError(f"{flag} {path}: not a kdcli {what} file")
    if str(meta.get("format_version")) != version:
        raise ArtifactError(f"{flag} {path}: {what} format version {meta.get('format_version')}, "
                            f"this kdcli reads version {version}")
    missing = sorted(set(columns or ()) - set(table.column_names))
    if missing:
        raise ArtifactError(f"{flag} {path}: lacks the columns {', '.join(missing)}")
    return table.to_pylist(), meta


def kept_output(out: str | Path, overwrite: bool, settings: dict, reader, what: str, holds: str):
    """(rows, metadata) of an existing --out computed with the same `settings` (a re-run array
    task keeps it); None when there is none or --overwrite; anything else there is refused.
    `reader` reads the file (read_cka, read_collapse); `what` names its kind ("CKA"), `holds`
    its content ("CKA", "the collapse")."""
    from kdcli.errors import ArtifactError

    out = Path(out)
    if not out.exists() or overwrite:
        return None
    try:
        rows, meta = reader(out)
    except ArtifactError:
        raise ArtifactError(f"--out {out}: exists and is not a kdcli {what} file; choose another name "
                            "or pass --overwrite") from None
    if meta.get("settings") != settings:
        raise ArtifactError(f"--out {out}: holds {holds} of other runs or other settings; pass "
                            "--overwrite to replace it")
    return rows, meta


def write_metrics(path: str | Path, rows: list[dict], metadata: dict) -> None:
    """One row per evaluation; every row has the same keys."""
    columns = {k: [row[k] for row in rows] for k in rows[0]} if rows else {}
    write_table(path, columns, metadata)
