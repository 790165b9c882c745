"""The command line: both training commands in-process, error lines from `main()`, and a few
real runs of the installed `kdcli` script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcli.cli.main import app, main

FAST = ["--epochs", "1", "--threads", "1", "--device", "cpu"]
DATASETS = {
    "mnist1d": ["--dataset-arg", "n_train=600", "--dataset-arg", "n_test=300", "--model", "test_cnn1d"],
    "digits": ["--dataset", "digits", "--model", "test_mlp"],
}


def kdcli_script() -> str:
    here = Path(sys.executable).parent / "kdcli"
    script = str(here) if here.is_file() else shutil.which("kdcli")
    assert script, "the kdcli console script is not installed"
    return script


def script_env() -> dict:
    env = dict(os.environ)  # carries the private KDCLI_CACHE_DIR of conftest
    env.pop("KDCLI_DEBUG", None)
    return env


# ---------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_teacher_then_labels(dataset, tmp_path):
    runner = CliRunner()
    teacher = tmp_path / "teacher"
    res = runner.invoke(app, ["train-teacher", "--out", str(teacher), *DATASETS[dataset], *FAST])
    assert res.exit_code == 0, res.output
    assert "teacher" in res.stdout and dataset in res.stdout  # the summary table
    t_run = json.loads((teacher / "run.json").read_text())
    assert t_run["stage"] == "train-teacher" and t_run["dataset"]["name"] == dataset

    student = tmp_path / "student"
    args = ["train-labels", "--out", str(student), "--teacher", str(teacher), "--kappa", "0.5",
            "--seed", "2", *FAST, "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    # --quiet: one line (the run, its result, the seconds), for logs
    run = json.loads((student / "run.json").read_text())
    assert res.stdout == (f"{student}: completed {run['final']['step']} steps, test_acc "
                          f"{run['final']['test_acc']:.4f}, in {res.stdout.split(' in ')[-1]}")
    assert res.stdout.endswith(" s\n") and res.stdout.count("\n") == 1
    assert run["stage"] == "train-labels"
    assert run["dataset"]["fingerprint"] == t_run["dataset"]["fingerprint"]
    assert run["model"]["name"] == t_run["model"]["name"]
    assert run["subset"]["size"] == t_run["dataset"]["n_train"] // 2
    assert run["config"]["seed"] == 2 and run["config"]["kappa"] == 0.5

    again = runner.invoke(app, args)  # a re-run of a finished array task does nothing
    assert again.exit_code == 0
    assert "already complete" in again.stderr
    assert json.loads((student / "run.json").read_text())["run_id"] == run["run_id"]


def test_key_value_arguments(tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["train-labels", "--out", str(out), *DATASETS["mnist1d"][:4],
                                   "--model", "cnn1d", "--model-arg", "channels=3", "--kappa", "0.1",
                                   *FAST, "-q"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["args"]["channels"] == 3  # parsed as JSON: an int, not "3"
    assert run["dataset"]["args"]["n_train"] == 600


@pytest.fixture(scope="module")
def bad_teachers(teacher_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-teachers")
    empty = root / "empty"
    empty.mkdir()
    incomplete = Path(shutil.copytree(teacher_run, root / "incomplete"))
    (incomplete / "run.json").unlink()
    truncated = Path(shutil.copytree(teacher_run, root / "truncated"))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return {"empty": empty, "incomplete": incomplete, "truncated": truncated}


# (extra arguments, the flag the error line must name)
BAD_INPUTS = {
    "unknown dataset": (["--dataset", "no_such_data"], "--dataset"),
    "unknown model": (["--model", "no_such_model"], "--model"),
    "unknown model arg": (["--model", "cnn1d", "--model-arg", "chanels=3"], "--model-arg"),
    "malformed dataset arg": (["--dataset-arg", "n_train"], "--dataset-arg"),
    "kappa 0": (["--kappa", "0"], "--kappa"),
    "kappa 2 on digits": (["--kappa", "2", *DATASETS["digits"]], "--kappa"),
    "cifar10 without data dir": (["--dataset", "cifar10"], "--data-dir"),
    "parquet-images, missing dir": (["--dataset", "parquet-images", "--data-dir", "{tmp}/nowhere"],
                                    "--data-dir"),
    "teacher not a run": (["--teacher", "{empty}"], "--teacher"),
    "teacher incomplete": (["--teacher", "{incomplete}"], "--teacher"),
    "teacher truncated": (["--teacher", "{truncated}"], "--teacher"),
    "dataset arg not a number": (["--dataset-arg", "n_train=abc"], "--dataset-arg"),
    "model arg that breaks the model": (["--model", "cnn1d", "--model-arg", "channels=0"], "--model"),
    "model that does not fit the data": (["--model", "resnet20"], "--model resnet20"),
    "infinite warm-up": (["--warmup-epochs", "inf"], "--warmup-epochs"),
    "grid repeating a value": (["--grid", "seed=0,0", "--task-index", "0"], "--grid"),
    "out under a file": (["--out", "/etc/hostname/run"], "/etc/hostname"),
    "unknown precision": (["--precision", "fp8"], "--precision"),
    "fp16 without CUDA": (["--precision", "fp16", "--device", "cpu"], "--precision fp16"),
}


def fill(args: list[str], tmp_path: Path, teachers: dict[str, Path]) -> list[str]:
    return [a.format(tmp=tmp_path, **teachers) for a in args]


def check_error_output(code, stderr: str, flag: str) -> None:
    assert code not in (0, None)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), stderr
    assert flag in lines[0], lines[0]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_error_line(case, tmp_path, bad_teachers, monkeypatch, capsys):
    extra, flag = BAD_INPUTS[case]
    out = tmp_path / "out"
    argv = ["kdcli", "train-labels", "--out", str(out), *fill(extra, tmp_path, bad_teachers), *FAST]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delenv("KDCLI_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main()
    check_error_output(info.value.code, capsys.readouterr().err, flag)
    assert not out.exists()  # nothing written for a run that could not start


@pytest.mark.parametrize("flag,argv", [("--epochs", ["--epochs", "many"]),
                                       ("--no-such-flag", ["--no-such-flag"])])
def test_usage_error_gives_a_message_not_a_traceback(flag, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["kdcli", "train-labels", "--out", str(tmp_path / "o"), *argv])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "Traceback" not in err
    assert flag in err


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    from kdcli.errors import ConfigError

    monkeypatch.setattr(sys, "argv", ["kdcli", "train-labels", "--out", str(tmp_path / "o"),
                                      "--kappa", "0"])
    monkeypatch.setenv("KDCLI_DEBUG", "1")
    with pytest.raises(ConfigError, match="--kappa"):
        main()


# ---------------------------------------------------------------------------- the installed script


def test_import_does_not_load_torch():
    code = ("import sys, kdcli.cli.main; "
            "heavy = [m for m in ('torch', 'pyarrow', 'numpy', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_script_help_and_version():
    script = kdcli_script()
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60,
                          env=script_env())
    assert proc.returncode == 0, proc.stderr
    assert "train-teacher" in proc.stdout and "train-labels" in proc.stdout
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60,
                          env=script_env())
    assert proc.returncode == 0 and proc.stdout.startswith("kdcli ")


def test_script_errors(tmp_path, bad_teachers):
    """The real console script on two bad inputs, run side by side: one rejected while the
    options are parsed, one after torch is loaded and the teacher is read."""
    cases = ["kappa 0", "teacher truncated"]
    procs = {}
    for i, case in enumerate(cases):
        extra, _ = BAD_INPUTS[case]
        argv = [kdcli_script(), "train-labels", "--out", str(tmp_path / f"out{i}"),
                *fill(extra, tmp_path, bad_teachers), *FAST]
        procs[case] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=script_env())
    for i, (case, proc) in enumerate(procs.items()):
        _, err = proc.communicate(timeout=120)
        check_error_output(proc.returncode, err, BAD_INPUTS[case][1])
        assert not (tmp_path / f"out{i}").exists()


def test_script_usage_error():
    proc = subprocess.run([kdcli_script(), "train-labels", "--out", "x", "--epochs", "many"],
                          capture_output=True, text=True, timeout=60, env=script_env())
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--epochs" in proc.stderr


@pytest.mark.parametrize("name", ["meta", "mps", "gpu"])
def test_unsupported_device_is_a_config_error(name):
    from kdcli.errors import ConfigError
    from kdcli.train.device import select_device

    with pytest.raises(ConfigError, match="--device"):
        select_device(name)
