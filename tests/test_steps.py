"""Work counted in steps: evaluation and checkpoint intervals (steps or minutes, independent of
each other), default recipes per dataset and model, and an example sweep point killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdcli.config import TrainConfig, parse_interval
from kdcli.errors import ArtifactError, ConfigError
from kdcli.stages import train
from kdcli.stages.inputs import resolve
from kdcli.train.state import saved_progress
from tests.conftest import InterruptAt, Interrupted, same_weights, tiny_config, weights

# ---------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("text,parsed", [("500", ("steps", 500)), ("0", ("steps", 0)),
                                         ("10m", ("minutes", 10.0)), ("0.5m", ("minutes", 0.5))])
def test_intervals(text, parsed):
    assert parse_interval(text, "--eval-every") == parsed


@pytest.mark.parametrize("text", ["abc", "1.5", "-3", "0m", "10s", ""])
def test_bad_intervals_name_the_flag(text, tmp_path):
    with pytest.raises(ConfigError, match="--checkpoint-every"):
        TrainConfig(out=str(tmp_path), checkpoint_every=text)


def test_evaluation_intervals(tmp_path):
    only_last = train.run(tiny_config(tmp_path / "a", eval_every="0"))
    assert [r["step"] for r in only_last.rows] == [20]
    default = train.run(tiny_config(tmp_path / "b", eval_every=None))  # 10 per run: every 2 of 20 steps
    assert [r["step"] for r in default.rows] == list(range(2, 21, 2))
    odd = train.run(tiny_config(tmp_path / "c", eval_every="7"))
    assert [r["step"] for r in odd.rows] == [7, 14, 20]
    assert [r["epoch"] for r in odd.rows] == [0.7, 1.4, 2.0]
    # evaluation never changes what is learned
    assert same_weights(only_last.run_dir, default.run_dir) and same_weights(only_last.run_dir, odd.run_dir)


def test_checkpoints_every_few_minutes(tmp_path, monkeypatch):
    """A minutes interval checkpoints when that much time has passed; here the clock moves a
    minute at every look, so every step checkpoints, independently of evaluation."""
    import kdcli.train.loop as loop

    clock = iter(range(0, 10**6, 60))
    monkeypatch.setattr(loop.time, "monotonic", lambda: float(next(clock)))
    whole = train.run(tiny_config(tmp_path / "whole", checkpoint_every="0"))
    out = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train.run(tiny_config(out, checkpoint_every="1m", eval_every="0"), progress=InterruptAt(14))
    assert saved_progress(out)["step"] == 13
    train.run(tiny_config(out, checkpoint_every="1m", eval_every="0", resume=True))
    assert same_weights(whole.run_dir, out)


def test_no_checkpoint_means_an_interrupted_run_starts_again(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(Interrupted):
        train.run(tiny_config(out, checkpoint_every="0"), progress=InterruptAt(15))
    assert not (out / "checkpoint.safetensors").exists()
    assert not train.run(tiny_config(out, checkpoint_every="0", resume=True)).skipped


# ---------------------------------------------------------------------------- recipes


def test_recipe_fills_only_what_is_not_given(tmp_path):
    bare = resolve(TrainConfig(out=str(tmp_path), stage="train-teacher", model="cnn1d"))
    assert (bare.cfg.lr, bare.cfg.epochs, bare.cfg.batch_size) == (1e-2, 60, 128)
    assert bare.recipe["name"] == "mnist1d/cnn1d" and bare.recipe["applied"]["lr"] == 1e-2

    explicit = resolve(TrainConfig(out=str(tmp_path), stage="train-teacher", lr=3e-3, batch_size=64))
    assert (explicit.cfg.lr, explicit.cfg.epochs, explicit.cfg.batch_size) == (3e-3, 60, 64)
    assert "lr" not in explicit.recipe["applied"] and "batch_size" not in explicit.recipe["applied"]

    other = resolve(TrainConfig(out=str(tmp_path), stage="train-teacher", model="mlp"))
    assert other.recipe["name"] == "default" and (other.cfg.lr, other.cfg.epochs) == (1e-3, 30)


def test_a_bare_run_is_skipped_again_and_a_recipe_change_is_noticed(tmp_path):
    done = train.run(tiny_config(tmp_path / "r", lr=None))  # test_cnn1d: the fallback recipe's lr
    assert done.run["config"]["lr"] == 1e-3 and done.run["recipe"]["applied"]["lr"] == 1e-3
    assert train.run(tiny_config(tmp_path / "r", lr=None)).skipped
    with pytest.raises(ArtifactError, match=r"other settings \(lr\)"):
        train.run(tiny_config(tmp_path / "r", lr=1e-2))


@pytest.mark.slow
def test_bare_teacher_on_the_default_dataset_is_a_good_one(tmp_path, monkeypatch):
    """`kdcli train-teacher --model cnn1d` with no other flag: ≥ 85% test accuracy."""
    from typer.testing import CliRunner

    from kdcli.cli.main import app

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # one thread: fast on a shared 2-core machine
    res = CliRunner().invoke(app, ["train-teacher", "--model", "cnn1d", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "t" / "run.json").read_text())
    assert run["recipe"]["name"] == "mnist1d/cnn1d" and run["dataset"]["n_train"] == 4000
    assert run["final"]["test_acc"] >= 0.85


# ---------------------------------------------------------------------------- a killed sweep point


@pytest.mark.slow
def test_example_sweep_point_killed_mid_run_resumes_to_identical_weights(tmp_path):
    """The examples' student command, SIGKILLed after a checkpoint and run again as is (the
    examples pass --resume), ends with the weights of an uninterrupted run."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    env = {**os.environ, "OUT": str(tmp_path / "out"), "N_TRAIN": "600", "N_TEST": "200",
           "TEACHER_EPOCHS": "2", "CHANNELS": "8", "STUDENT_STEPS": "4000", "CHECKPOINT_EVERY": "200",
           "KDCLI": str(Path(sys.executable).parent / "kdcli")}
    script = f"source {examples}/_common.sh; " + "{}"

    def bash(command: str, **kw):
        return subprocess.Popen(["bash", "-c", script.format(command)], env=env, cwd=tmp_path, **kw)

    assert bash("setup_teacher").wait(timeout=300) == 0
    point = tmp_path / "out" / "kd" / "tau4" / "k0.5" / "s0"
    assert bash("kd_student 0.5 0 4").wait(timeout=300) == 0
    uninterrupted = weights(point)
    for p in point.iterdir():
        p.unlink()

    proc = bash("kd_student 0.5 0 4", start_new_session=True)
    deadline = time.monotonic() + 120
    while not (point / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (point / "checkpoint.safetensors").exists() and not (point / "run.json").exists()
    killed_at = saved_progress(point)["step"]
    assert 0 < killed_at < 4000

    assert bash("kd_student 0.5 0 4").wait(timeout=300) == 0
    resumed = weights(point)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
