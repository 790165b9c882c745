"""Neural-collapse results as Parquet: one row per (run, split), metadata naming the runs."""

from __future__ import annotations

from pathlib import Path

from kdcli.io.tables import read_rows, write_rows

COLLAPSE_FORMAT_VERSION = "1"
COLUMNS = {  # name: (Arrow type name, meaning) — documented in the README
    "run_id": ("string", "the run (run.json run_id)"),
    "run_dir": ("string", "its directory when measured"),
    "split": ("string", "seen (the run's κ subset), train (the whole pool) or test"),
    "n": ("int64", "samples measured"),
    "classes": ("int64", "classes present among them (absent ones are left out of every measure)"),
    "d": ("int64", "feature size of the penultimate layer"),
    "nc1": ("float64", "tr(Σ_W Σ_B⁺)/C: within-class variability relative to between-class"),
    "nc2_equinorm": ("float64", "std/mean of the centred class-mean norms"),
    "nc2_equiangular": ("float64", "mean |cos(m_c, m_c') + 1/(C−1)| over class pairs"),
    "nc2_etf": ("float64", "‖MᵀM/‖MᵀM‖_F − (I − 11ᵀ/C)/√(C−1)‖_F: distance to the simplex ETF"),
    "nc3": ("float64", "‖W/‖W‖_F − Mᵀ/‖M‖_F‖²_F: last-layer weights vs centred class means"),
    "nc4": ("float64", "fraction of samples where the nearest class mean and the network disagree"),
    "accuracy": ("float64", "the network's accuracy on these samples"),
}


def write_collapse(path: str | Path, rows: list[dict], metadata: dict) -> None:
    write_rows(path, rows, COLUMNS, metadata)


def read_collapse(path: str | Path, flag: str = "--out") -> tuple[list[dict], dict]:
    """Rows and (JSON-decoded) metadata of a collapse file; anything else raises ArtifactError."""
    return read_rows(path, flag, "kdcli-collapse", COLLAPSE_FORMAT_VERSION, "collapse", COLUMNS)
