"""Find runs under a root and pair students with their label-trained twins.

A pair shares dataset, teacher, student model, κ, subset seed, seed and every
training hyper-parameter (DESIGN.md); the arms differ only in the loss:
`labels` (train-labels, no smoothing) is the baseline, `kd` arms are `distill`
runs (one per τ, α), `ls` arms are train-labels runs with label smoothing (the
label-smoothing control). Runs with no twin, run dirs without run.json, and
duplicates are reported, never dropped silently or counted twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from kdcli.config import DistillConfig, field_defaults, fields_with_role, without_overridden

# The pairing key's settings: those that change the trained weights (kdcli/config.py roles);
# the arm's loss settings, inputs (compared through fingerprint, model, teacher id) and how a
# run ran are not part of it.
PAIRING = fields_with_role(DistillConfig, "training")


# A setting a run does not record predates it: it ran at the default (e.g. precision fp32).
DEFAULTS = {k: v for k, v in field_defaults(DistillConfig).items() if k in PAIRING}


def setting(run: dict) -> dict:
    """The config fields a pair shares, besides dataset, teacher and model."""
    return without_overridden({k: run["config"].get(k, DEFAULTS.get(k)) for k in PAIRING
                               if k in run["config"] or DEFAULTS.get(k) is not None})


def pair_key(run: dict) -> tuple:
    teacher = (run.get("teacher") or {}).get("run_id")
    return (run["dataset"]["fingerprint"], teacher, run["model"]["name"],
            json.dumps(run["model"]["args"], sort_keys=True),
            json.dumps(setting(run), sort_keys=True, default=str))


def arm(run: dict) -> str | None:
    """'labels', 'kd τ=… α=…', 'ls ε=…' / 'ls matched τ=…', or None for non-students."""
    ls = run["config"].get("label_smoothing", 0.0)
    if run.get("stage") == "distill":
        kd = run["kd"]
        name = f"kd τ={kd['tau']:g} α={kd['alpha']:g}" + (f" ε={ls:g}" if ls else "")
        if kd.get("mode") == "online":
            name += " online"
        if run["config"].get("cross_dataset"):
            name += " cross-dataset"
        if kd.get("topk"):
            name += f" top-{kd['topk']}" + (" bucket" if kd.get("topk_tail") == "bucket" else "")
        return name
    if run.get("stage") == "train-labels" and run.get("teacher"):
        cross = " cross-dataset" if run["config"].get("cross_dataset") else ""
        if run["config"].get("match_smoothing_tau"):
            return f"ls matched τ={run['config']['match_smoothing_tau']:g}{cross}"
        return f"ls ε={ls:g}{cross}" if ls else "labels"
    return None


@dataclass
class Pair:
    arm: str
    run: dict  # the KD or label-smoothing student
    labels: dict  # its label-trained twin


@dataclass
class Pairing:
    pairs: list[Pair]
    unpaired: list[dict]
    duplicates: list[dict]
    no_teacher: list[dict] = field(default_factory=list)  # label runs trained without --teacher


def pair_runs(runs: list[dict]) -> Pairing:
    by_key: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    no_teacher = []
    for run in runs:
        name = arm(run)
        if name is not None:
            by_key[pair_key(run)][name].append(run)
        elif run.get("stage") == "train-labels":
            no_teacher.append(run)
    pairs, unpaired, duplicates = [], [], []
    for arms in by_key.values():
        for arm_runs in arms.values():
            arm_runs.sort(key=lambda r: r["dir"])  # keep the first by path, list the rest
            duplicates.extend(arm_runs[1:])
            del arm_runs[1:]
        baseline = arms.get("labels")
        others = {name: rs[0] for name, rs in arms.items() if name != "labels"}
        if baseline is None:
            unpaired.extend(others.values())
        elif not others:
            unpaired.extend(baseline)
        else:
            pairs.extend(Pair(name, run, baseline[0]) for name, run in others.items())
    return Pairing(pairs, unpaired, duplicates, no_teacher)
