"""--grid / --task-index / --print-grid: one grid point per task, idempotent, clear errors."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from kdcli.config import DistillConfig, TrainConfig
from kdcli.errors import ConfigError
from kdcli.sweep import grid_point, grid_size, parse_grid, point_name, task_indices

ARGS = ["train-labels", "--dataset", "digits", "--model", "test_mlp", "--epochs", "1", "--threads", "1",
        "--grid", "kappa=0.2,0.5", "--grid", "seed=0,1,2", "--quiet"]


def test_points_in_cartesian_order():
    grid = parse_grid(["kappa=0.02,0.1", "seed=0,1,2", "tau=1,4"], DistillConfig, "distill")
    expected = list(itertools.product([0.02, 0.1], [0, 1, 2], [1.0, 4.0]))
    assert grid_size(grid) == 12
    assert [tuple(grid_point(grid, i).values()) for i in range(12)] == expected
    assert isinstance(grid_point(grid, 0)["seed"], int) and isinstance(grid_point(grid, 0)["tau"], float)
    assert point_name(grid_point(grid, 5)) == "kappa0.02_seed2_tau4"


@pytest.mark.parametrize("item, words", [("kappa", "KEY=V1"), ("kapa=1", "cannot be swept|can sweep"),
                                         ("seed=a,b", "not a valid int"), ("dataset_args=1", "single-valued"),
                                         ("out=x", "can sweep")])
def test_bad_grids(item, words):
    with pytest.raises(ConfigError, match=words):
        parse_grid([item], TrainConfig, "train-labels")


def test_index_from_slurm_and_range(monkeypatch):
    grid = parse_grid(["seed=0,1"], TrainConfig, "train-labels")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert task_indices(None, 2) == [1] and task_indices("0", 2) == [0]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "x")
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID='x'"):
        task_indices(None, 2)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(ConfigError, match="--task-index is required"):
        task_indices(None, 2)
    with pytest.raises(ConfigError, match="expected 0..1"):
        grid_point(grid, 2)


@pytest.mark.parametrize("text,block,expected", [
    ("0-3,7", None, [0, 1, 2, 3, 7]), ("5,1", None, [5, 1]), ("all", None, list(range(10))),
    (" 4 ", None, [4]), ("0", 4, [0, 1, 2, 3]), ("2", 4, [8, 9]), ("0-1", 4, list(range(8))),
    ("all", 3, list(range(10)))])
def test_task_index_lists_ranges_and_blocks(text, block, expected):
    assert task_indices(text, 10, block) == expected  # a grid of 10 points


@pytest.mark.parametrize("text,block,words", [
    ("10", None, "grid point 10 is outside the grid, which has 10"), ("3-12", None, "grid point 10 is outside"),
    ("1,2,1", None, "names grid point 1 twice"), ("0-2,2", None, "twice"), ("3-1", None, "A ≤ B"),
    ("a", None, "expected N, A-B"), ("1-", None, "expected N"), ("", None, "expected N"), ("-1", None, "expected N"),
    ("3", 4, "block 3 is outside the grid, which has 3 blocks"), ("0", 0, "--task-block 0")])
def test_bad_task_indices(text, block, words):
    with pytest.raises(ConfigError, match=words):
        task_indices(text, 10, block)


def test_every_index_runs_its_point_once(tmp_path):
    from kdcli.cli.main import app

    runner = CliRunner()
    size = runner.invoke(app, [*ARGS, "--out", str(tmp_path), "--print-grid"])
    assert size.exit_code == 0 and size.stdout.strip() == "6"
    for i in range(6):
        assert runner.invoke(app, [*ARGS, "--out", str(tmp_path), "--task-index", str(i)]).exit_code == 0
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == sorted(f"kappa{k:g}_seed{s}" for k in (0.2, 0.5) for s in (0, 1, 2))
    for d in tmp_path.iterdir():
        run = json.loads((d / "run.json").read_text())
        assert d.name == f"kappa{run['config']['kappa']:g}_seed{run['config']['seed']}"
    before = (tmp_path / "kappa0.5_seed1" / "run.json").read_bytes()
    again = runner.invoke(app, [*ARGS, "--out", str(tmp_path), "--task-index", "4"])
    assert again.exit_code == 0 and "skipped" in again.stderr
    assert (tmp_path / "kappa0.5_seed1" / "run.json").read_bytes() == before
