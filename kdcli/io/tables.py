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


def write_metrics(path: str | Path, rows: list[dict], metadata: dict) -> None:
    """One row per evaluation; every row has the same keys."""
    columns = {k: [row[k] for row in rows] for k in rows[0]} if rows else {}
    write_table(path, columns, metadata)
