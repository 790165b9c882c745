"""Grids for slurm job arrays: `--grid kappa=0.02,0.1 --grid seed=0,1,2 --task-index N`.

A grid is the Cartesian product of the listed values, in the order given (the
last key varies fastest). Task N runs the N-th point in its own run dir,
OUT/<key><value>_<key><value>…, so array tasks never share files and a
re-submitted array skips completed points. One process may run several points
(--task-index 0-9, 0,4,7, all; --task-block B for a block per array task), one
after another, paying the start-up (importing torch) once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from pathlib import Path

from kdcli.errors import ConfigError, PointsFailed


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


def task_indices(text: str | None, size: int, block: int | None = None) -> list[int]:
    """The grid points to run, in the order given: --task-index N, A-B, a comma list of these
    (0-3,7), or `all`; default $SLURM_ARRAY_TASK_ID. With --task-block B the index is a block
    number: block i runs points i·B … i·B+B−1 (the last block may be shorter)."""
    flag = "--task-index"
    if text is None:
        text = os.environ.get("SLURM_ARRAY_TASK_ID")
        if text is None:
            raise ConfigError("--task-index is required with --grid (or run inside a slurm array, "
                              "which sets SLURM_ARRAY_TASK_ID)")
        flag = "SLURM_ARRAY_TASK_ID"
        if not text.isdigit():
            raise ConfigError(f"SLURM_ARRAY_TASK_ID={text!r}: expected a non-negative integer")
    if block is not None and block < 1:
        raise ConfigError(f"--task-block {block}: expected a positive number of points per task")
    if block is None:
        indices = _index_list(text, flag, size, "grid point")
    else:
        blocks = math.ceil(size / block)
        indices = [i for b in _index_list(text, flag, blocks, "block")
                   for i in range(b * block, min((b + 1) * block, size))]
    return indices


def _index_list(text: str, flag: str, size: int, what: str) -> list[int]:
    text = text.strip()
    if text == "all":
        return list(range(size))
    indices: list[int] = []
    seen: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or (dash and int(last) < int(first)):
            raise ConfigError(f"{flag} {text}: expected N, A-B (A ≤ B), a comma list of these "
                              "(0-3,7), or all")
        end = int(last if dash else first)
        if end >= size:
            raise ConfigError(f"{flag} {text}: {what} {max(int(first), size)} is outside the grid, which "
                              f"has {size} {what}s (0..{size - 1})")
        for i in range(int(first), end + 1):
            if i in seen:
                raise ConfigError(f"{flag} {text}: names {what} {i} twice")
            seen.add(i)
            indices.append(i)
    return indices


def grid_point(grid: list[tuple[str, list]], index: int) -> dict:
    size = grid_size(grid)
    if not 0 <= index < size:
        raise ConfigError(f"--task-index {index}: the grid has {size} points, expected 0..{size - 1}")
    values = next(itertools.islice(itertools.product(*(v for _, v in grid)), index, None))
    return {name: value for (name, _), value in zip(grid, values)}


def point_name(point: dict) -> str:
    return "_".join(f"{name}{value:g}" if isinstance(value, float) else f"{name}{value}"
                    for name, value in point.items())


def grid_configs(cfg, grid_items: list[str], indices: str | None, block: int | None = None,
                 point_dir: str | None = None) -> list:
    """The config of each grid point to run: the point's values, and as its run dir
    OUT/<point name>, or OUT/<point_dir filled in with the point's values>."""
    grid = parse_grid(grid_items, type(cfg), cfg.stage)
    if point_dir is not None:
        _check_point_dir(point_dir, [name for name, _ in grid])
    configs = []
    for index in task_indices(indices, grid_size(grid), block):
        point = grid_point(grid, index)
        name = point_name(point) if point_dir is None else point_dir.format(
            **{k: f"{v:g}" if isinstance(v, float) else v for k, v in point.items()})
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ConfigError(f"--point-dir {point_dir}: gives {name}, outside --out")
        configs.append(cfg.replace(**point, out=str(Path(cfg.out) / name)))
    return configs


def _check_point_dir(template: str, keys: list[str]) -> None:
    """Every grid key once in braces (each point its own dir), nothing else, a relative path."""
    import string

    flag = f"--point-dir {template}"
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    if any(spec or conv for _, spec, conv in parsed):
        raise ConfigError(f"{flag}: name the keys only ({{kappa}}, not {{kappa:.2f}}): values are written as "
                          "in --grid")
    fields = [f for f, _, _ in parsed]
    names = [f.replace("-", "_") for f in fields]
    unknown = sorted(set(names) - set(keys))
    if unknown or sorted(set(names)) != sorted(keys) or any(f != n for f, n in zip(fields, names)):
        raise ConfigError(f"{flag}: expected a relative path naming each grid key in braces, "
                          f"e.g. {'/'.join(k + '{' + k + '}' for k in keys)}" +
                          (f" ({unknown[0]} is not a grid key)" if unknown else ""))
    if template.startswith("/") or ".." in Path(template).parts:
        raise ConfigError(f"{flag}: expected a path inside --out")


def point_error(cfg, exc: Exception) -> str:
    """A failed point's error line: the message, naming the point's run dir if it doesn't."""
    message = getattr(exc, "strerror", None) or str(exc)
    if isinstance(exc, OSError) and exc.filename:
        message = f"{exc.filename}: {message}"
    return message if str(cfg.out) in message else f"{cfg.out}: {message}"


def points_failed(failed: list[str], total: int, lost: list[str] | None = None) -> PointsFailed:
    """The error a sweep ends with when some points failed (each was reported as it failed), or
    were never run because their worker died."""
    not_run = f"; {len(lost)} not run (a worker died: {', '.join(lost)})" if lost else ""
    return PointsFailed(f"{len(failed)} of {total} points failed ({', '.join(failed)}){not_run}; the others "
                        "ran. Fix the cause and run the command again: completed points are skipped")
