"""`report`: PI vs κ over paired seeds from a tree of run dirs (reads run.json only)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from kdcli.errors import ConfigError
from kdcli.io.atomic import write_bytes, write_json
from kdcli.report.pairs import Pairing, Scan, pair_runs, scan
from kdcli.report.pi import pi_rows


@dataclass
class ReportResult:
    rows: list[dict]
    scan: Scan
    pairing: Pairing
    written: list[Path]


def run(root: str, out: str | None = None) -> ReportResult:
    if not Path(root).is_dir():
        raise ConfigError(f"ROOT {root}: no such directory")
    found = scan(root)
    pairing = pair_runs(found.runs)
    teacher_acc = {r["run_id"]: 100 * r["final"]["test_acc"] for r in found.runs
                   if r.get("stage") == "train-teacher"}
    rows = pi_rows(pairing, teacher_acc)
    written = []
    if out is not None and rows:
        out_dir = Path(out)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_bytes(out_dir / "pi_vs_kappa.csv", buf.getvalue().encode())
        write_json(out_dir / "pi_vs_kappa.json", {
            "rows": rows,
            "unpaired": [r["dir"] for r in pairing.unpaired],
            "duplicates": [r["dir"] for r in pairing.duplicates],
            "incomplete": found.incomplete,
            "unreadable": found.unreadable,
        })
        written = [out_dir / "pi_vs_kappa.csv", out_dir / "pi_vs_kappa.json"]
    return ReportResult(rows, found, pairing, written)
