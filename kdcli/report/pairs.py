"""Find runs under a root and pair each `distill` student with its `train-labels` twin.

A pair shares dataset, teacher, student model, κ, subset seed, seed and every
training hyper-parameter; they differ only in the loss (DESIGN.md). Runs with no
twin, run dirs without run.json, and duplicates are reported, never dropped
silently or counted twice.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# Config fields that do not enter the pairing key: where the run lives and how
# it ran, plus the distillation-only loss settings (they label the KD arm).
_NOT_IN_KEY = {"out", "stage", "overwrite", "resume", "device", "threads", "eval_batch_size",
               "eval_every", "teacher", "logits", "tau", "alpha", "kd_backend", "dataset",
               "dataset_args", "data_dir"}


@dataclass
class Scan:
    runs: list[dict] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def scan(root: str | Path) -> Scan:
    """Every run.json under root (recursively), and run dirs that have none."""
    result = Scan()
    for dirpath, _dirs, files in os.walk(root):
        if "run.json" in files:
            try:
                run = json.loads((Path(dirpath) / "run.json").read_text())
                run["dir"] = dirpath
                result.runs.append(run)
            except (OSError, ValueError):
                result.unreadable.append(dirpath)
        elif {"checkpoint.json", "model.safetensors", "metrics.parquet"} & set(files):
            result.incomplete.append(dirpath)
    return result


def pair_key(run: dict) -> tuple:
    cfg = {k: v for k, v in run["config"].items() if k not in _NOT_IN_KEY}
    teacher = (run.get("teacher") or {}).get("run_id")
    return (run["dataset"]["fingerprint"], teacher, json.dumps(run["model"]["args"], sort_keys=True),
            run["model"]["name"], json.dumps(cfg, sort_keys=True, default=str))


@dataclass
class Pairing:
    pairs: list[tuple[dict, dict]]  # (kd run, labels run)
    unpaired: list[dict]
    duplicates: list[dict]


def pair_runs(runs: list[dict]) -> Pairing:
    """Match distill runs with train-labels runs of the same key (teachers are not students)."""
    by_key: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.get("stage") == "distill":
            arm = f"kd tau={run['kd']['tau']} alpha={run['kd']['alpha']}"
        elif run.get("stage") == "train-labels" and run.get("teacher"):
            arm = "labels"
        else:
            continue
        by_key[pair_key(run)][arm].append(run)
    pairs, unpaired, duplicates = [], [], []
    for arms in by_key.values():
        for arm_runs in arms.values():
            duplicates.extend(arm_runs[1:])
            del arm_runs[1:]
        labels = arms.get("labels", [])
        kd_arms = [r for name, rs in arms.items() if name != "labels" for r in rs]
        if not labels:
            unpaired.extend(kd_arms)
        elif not kd_arms:
            unpaired.extend(labels)
        else:
            pairs.extend((kd, labels[0]) for kd in kd_arms)
    return Pairing(pairs, unpaired, duplicates)
