"""Several grid points per process (--task-index lists, ranges, all, --task-block) and over
worker processes (--workers): the same artifacts as one process per point, bit-identical label
students, a failing point that does not stop the others, and the bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcli.cli.main import app
from tests.conftest import weights

KDCLI = str(Path(sys.executable).parent / "kdcli")
ARGS = ["train-labels", "--dataset", "digits", "--model", "test_mlp", "--epochs", "2", "--threads", "1",
        "--device", "cpu", "--grid", "kappa=0.2,0.5", "--grid", "seed=0,1", "--quiet"]
POINTS = [f"kappa{k}_seed{s}" for k in ("0.2", "0.5") for s in (0, 1)]


def same_run(a: Path, b: Path) -> None:
    """The same weights, bit for bit, and the same metrics but for the seconds."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa), (a, b)
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    strip = lambda row: {k: v for k, v in row.items() if k != "seconds"}  # noqa: E731
    assert strip(ra["final"]) == strip(rb["final"]) and ra["subset"] == rb["subset"]
    assert ra["config"] | {"out": ""} == rb["config"] | {"out": ""}


def test_every_point_in_one_process_then_skipped(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "all"), "--task-index", "all"])
    assert res.exit_code == 0, res.output
    assert [line.split(":")[0] for line in res.stdout.splitlines()] == [str(tmp_path / "all" / p) for p in POINTS]
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(POINTS)
    some = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "some"), "--task-index", "3,0"])
    assert some.exit_code == 0 and sorted(p.name for p in (tmp_path / "some").iterdir()) == [POINTS[0], POINTS[3]]
    for p in (POINTS[0], POINTS[3]):
        same_run(tmp_path / "all" / p, tmp_path / "some" / p)
    again = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "all"), "--task-block", "2", "--task-index", "1"])
    assert again.exit_code == 0 and again.stderr.count("already complete, skipped") == 2
    assert runner.invoke(app, [*ARGS, "--out", str(tmp_path), "--task-block", "3", "--print-grid"]).stdout == "2\n"


def test_a_failing_point_does_not_stop_the_others(tmp_path):
    out = tmp_path / "sweep"
    (out / POINTS[1]).mkdir(parents=True)
    (out / POINTS[1] / "notes.txt").write_text("not kdcli's")  # a foreign folder: that point is refused
    res = CliRunner().invoke(app, [*ARGS, "--out", str(out), "--task-index", "all"])
    assert res.exit_code == 1
    assert f"Error: --out {out / POINTS[1]}: exists and is not a kdcli run directory" in res.stderr
    assert "1 of 4 points failed (kappa0.2_seed1); the others ran" in str(res.exception)
    assert all((out / p / "run.json").is_file() for p in POINTS if p != POINTS[1])
    assert sorted(os.listdir(out / POINTS[1])) == ["notes.txt"]  # left as it was


@pytest.mark.parametrize("extra,words", [
    (["--task-index", "0,4"], "grid point 4 is outside the grid, which has 4"),
    (["--task-index", "1,1"], "names grid point 1 twice"),
    (["--task-index", "2-"], "expected N, A-B"),
    (["--task-index", "all", "--workers", "5"], "--workers 5: more workers than the 4 points"),
    (["--task-index", "all", "--workers", "2", "--threads", str(len(os.sched_getaffinity(0)))],
     "needs"),
    (["--task-index", "all", "--workers", "0"], "--workers 0: expected at least 1"),
    (["--task-index", "all", "--point-dir", "k{kappa}"], "naming each grid key in braces"),
    (["--task-index", "all", "--point-dir", "k{kappa}/s{seed}/{tau}"], "tau is not a grid key"),
    (["--task-index", "all", "--point-dir", "k{kappa:.1f}/s{seed}"], "name the keys only"),
    (["--task-index", "all", "--point-dir", "../k{kappa}/s{seed}"], "a path inside --out"),
])
def test_bad_sweep_inputs(extra, words, tmp_path):
    args = [a for a in ARGS if a not in ("--threads", "1")] if "--threads" in extra else ARGS
    res = subprocess.run([KDCLI, *args, "--out", str(tmp_path / "o"), *extra], capture_output=True, text=True)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error:"), res.stderr
    assert words in lines[0]
    assert not (tmp_path / "o").exists()


def test_point_dirs_and_flags_that_need_a_grid(tmp_path):
    """--point-dir lays the points out as a bash loop over --out would: the same runs."""
    runner = CliRunner()
    res = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "g"), "--task-index", "1-2",
                              "--point-dir", "k{kappa}/s{seed}"])
    assert res.exit_code == 0, res.output
    assert sorted(str(p.relative_to(tmp_path / "g")) for p in (tmp_path / "g").glob("*/*")) == ["k0.2/s1", "k0.5/s0"]
    single = [a for a in ARGS if a not in ("--grid", "kappa=0.2,0.5", "seed=0,1")]
    one = runner.invoke(app, [*single, "--out", str(tmp_path / "one"), "--kappa", "0.5", "--seed", "0"])
    assert one.exit_code == 0, one.output
    same_run(tmp_path / "g" / "k0.5" / "s0", tmp_path / "one")
    bare = runner.invoke(app, [*single, "--out", str(tmp_path / "x"), "--task-index", "0"])
    assert bare.exit_code != 0 and "give --grid" in str(bare.exception)


def test_inputs_are_read_once_per_file_version_while_sharing(teacher_run, tmp_path):
    from kdcli.config import DumpConfig
    from kdcli.data import build_dataset
    from kdcli.io.logits import read_logits
    from kdcli.io.shared import sharing
    from kdcli.stages import dump_logits

    logits = tmp_path / "t.parquet"
    dump_logits.run(DumpConfig(teacher=str(teacher_run), out=str(logits), device="cpu"))
    assert read_logits(logits, "train") is not read_logits(logits, "train")  # a single run keeps nothing
    with sharing():
        first = read_logits(logits, "train")
        assert read_logits(logits, "train") is first and read_logits(logits, "test") is not first
        assert build_dataset("digits") is build_dataset("digits") is not build_dataset("digits", {"split_seed": 3})
        dump_logits.run(DumpConfig(teacher=str(teacher_run), out=str(logits), device="cpu",
                                   overwrite=True))  # the same file written again: read again
        again = read_logits(logits, "train")
        assert again is not first and (again.dense == first.dense).all()
    assert build_dataset("digits") is not build_dataset("digits")


@pytest.mark.slow  # one process per point, and two workers: subprocesses importing torch
def test_workers_and_one_process_per_point_make_the_same_runs(tmp_path):
    for i in range(len(POINTS)):
        subprocess.run([KDCLI, *ARGS, "--out", str(tmp_path / "separate"), "--task-index", str(i)], check=True)
    res = subprocess.run([KDCLI, *ARGS, "--out", str(tmp_path / "workers"), "--task-index", "all",
                          "--workers", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(line.split(":")[0] for line in res.stdout.splitlines()) == sorted(
        str(tmp_path / "workers" / p) for p in POINTS)
    CliRunner().invoke(app, [*ARGS, "--out", str(tmp_path / "inprocess"), "--task-index", "all"])
    for p in POINTS:
        same_run(tmp_path / "separate" / p, tmp_path / "workers" / p)
        same_run(tmp_path / "separate" / p, tmp_path / "inprocess" / p)


@pytest.mark.slow
def test_offline_distillation_points_in_one_process(teacher_run, tmp_path):
    """Points sharing one logits file (read and checked once) are the runs separate processes make."""
    logits = tmp_path / "t.parquet"
    subprocess.run([KDCLI, "dump-logits", "--teacher", str(teacher_run), "--out", str(logits), "--quiet"],
                   check=True)
    kd = ["distill", "--logits", str(logits), "--epochs", "2", "--threads", "1", "--device", "cpu",
          "--tau", "2", "--grid", "kappa=0.3,0.6", "--quiet"]
    for i in range(2):
        subprocess.run([KDCLI, *kd, "--out", str(tmp_path / "separate"), "--task-index", str(i)], check=True)
    res = CliRunner().invoke(app, [*kd, "--out", str(tmp_path / "inprocess"), "--task-index", "all"])
    assert res.exit_code == 0, res.output
    for p in ("kappa0.3", "kappa0.6"):
        same_run(tmp_path / "separate" / p, tmp_path / "inprocess" / p)
