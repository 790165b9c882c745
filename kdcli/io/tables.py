"""Small Parquet tables (metrics, subsets) with kdcli schema metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdcli.io.atomic import atomic_path


def write_table(path: str | Path, columns: dict[str, list | np.ndarray], metadata: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
            for k, v in metadata.items()}
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_metrics(path: str | Path, rows: list[dict], metadata: dict) -> None:
    """One row per epoch; every row has the same keys."""
    columns = {k: [row[k] for row in rows] for k in rows[0]} if rows else {}
    write_table(path, columns, metadata)


def read_metrics(path: str | Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
