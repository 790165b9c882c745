"""--grid / --task-index / --print-grid: one grid point per task, idempotent, clear errors."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from kdcli.config import DistillConfig, TrainConfig
from kdcli.errors import ConfigError
from kdcli.sweep import grid_point, grid_size, parse_grid, point_name, task_index

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
    assert task_index(None) == 1 and task_index(0) == 0
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(ConfigError, match="--task-index is required"):
        task_index(None)
    with pytest.raises(ConfigError, match="expected 0..1"):
        grid_point(grid, 2)


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
