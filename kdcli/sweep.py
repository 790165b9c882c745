"""Grids for slurm job arrays: `--grid kappa=0.02,0.1 --grid seed=0,1,2 --task-index N`.

A grid is the Cartesian product of the listed values, in the order given (the
last key varies fastest). Task N runs the N-th point in its own run dir,
OUT/<key><value>_<key><value>…, so array tasks never share files and a
re-submitted array skips completed points. No scheduler of our own: slurm (or
xargs, or a bash loop over --task-index) does the fanning out.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from pathlib import Path

from kdcli.errors import ConfigError


def sweepable(config_type, stage: str) -> dict[str, dataclasses.Field]:
    """The settings a grid may sweep: what changes the trained model (roles training, arm and
    input; kdcli/config.py) and this stage's command offers."""
    return {f.name: f for f in dataclasses.fields(config_type)
            if f.metadata.get("role") in ("training", "arm", "input") and f.metadata.get("cli", True)
            and stage in (f.metadata.get("stages") or (stage,))}


def parse_grid(items: list[str], config_type, stage: str) -> list[tuple[str, list]]:
    """[(field, values)] from KEY=V1,V2 items, values converted to the field's type."""
    fields = sweepable(config_type, stage)
    grid, seen = [], set()
    for item in items:
        key, sep, values = item.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not values:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,… (e.g. kappa=0.02,0.1)")
        if name not in fields:
            raise ConfigError(f"--grid {key}: not a setting this stage can sweep; choose from "
                              f"{', '.join(sorted(fields))}")
        if name in seen:
            raise ConfigError(f"--grid {key}: given twice")
        seen.add(name)
        converted = [_convert(v.strip(), fields[name], key) for v in values.split(",")]
        names = [point_name({name: v}) for v in converted]
        if len(set(names)) < len(names):
            raise ConfigError(f"--grid {item}: repeats a value; each point needs its own run dir")
        grid.append((name, converted))
    return grid


def _convert(text: str, field: dataclasses.Field, key: str):
    kind = str(field.type)
    if kind.startswith(("dict", "tuple", "list")):
        raise ConfigError(f"--grid {key}: only single-valued options can be swept")
    try:
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("bool"):
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
    except (ValueError, KeyError):
        raise ConfigError(f"--grid {key}: {text!r} is not a valid {kind.split()[0]}") from None
    return text


def grid_size(grid: list[tuple[str, list]]) -> int:
    return math.prod(len(values) for _, values in grid)


def task_index(index: int | None) -> int:
    """--task-index, else $SLURM_ARRAY_TASK_ID."""
    if index is not None:
        return index
    env = os.environ.get("SLURM_ARRAY_TASK_ID")
    if env is None:
        raise ConfigError("--task-index is required with --grid (or run inside a slurm array, "
                          "which sets SLURM_ARRAY_TASK_ID)")
    if not env.isdigit():
        raise ConfigError(f"SLURM_ARRAY_TASK_ID={env!r}: expected a non-negative integer")
    return int(env)


def grid_point(grid: list[tuple[str, list]], index: int) -> dict:
    size = grid_size(grid)
    if not 0 <= index < size:
        raise ConfigError(f"--task-index {index}: the grid has {size} points, expected 0..{size - 1}")
    values = next(itertools.islice(itertools.product(*(v for _, v in grid)), index, None))
    return {name: value for (name, _), value in zip(grid, values)}


def point_name(point: dict) -> str:
    return "_".join(f"{name}{value:g}" if isinstance(value, float) else f"{name}{value}"
                    for name, value in point.items())


def apply_point(cfg, grid_items: list[str], index: int | None):
    """The config of one grid point: the point's values, and OUT/<point name> as run dir."""
    grid = parse_grid(grid_items, type(cfg), cfg.stage)
    point = grid_point(grid, task_index(index))
    return cfg.replace(**point, out=str(Path(cfg.out) / point_name(point)))
