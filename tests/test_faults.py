"""Faults: kills at named writes (KDCLI_FAULT) and at random moments, signals, damaged
artifacts, full disks and odd paths. Each case ends in a state with a way forward and one
clear line, never a traceback, a stuck run dir or a damaged file trusted."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdcli.config import DumpConfig
from kdcli.errors import ArtifactError
from kdcli.stages import dump_logits, report, train
from kdcli.train.state import saved_progress
from tests.conftest import InterruptAt, Interrupted, same_weights, tiny_config

KDCLI = str(Path(sys.executable).parent / "kdcli")
# A = --dataset digits --model mlp: 11 steps per epoch
A = ["--dataset", "digits", "--model", "mlp", "--threads", "1", "--quiet", "--device", "cpu"]


def kdcli(*args: str, fault: str | None = None, check: bool | None = None, **popen):
    env = {k: v for k, v in os.environ.items() if k not in ("KDCLI_FAULT", "KDCLI_DEBUG")}
    if fault:
        env["KDCLI_FAULT"] = fault
    proc = subprocess.run([KDCLI, *args], env=env, capture_output=True, text=True, timeout=300, **popen)
    if check is not None:
        assert (proc.returncode == 0) == check, proc.stderr
    return proc


def stray(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the command the fault tests interrupt."""
    out = tmp_path_factory.mktemp("ref") / "run"
    kdcli("train-teacher", "--out", str(out), *A, "--epochs", "3", "--checkpoint-every", "5", check=True)
    return out


# ---------------------------------------------------------------------------- 1, 2: kills at writes


@pytest.mark.slow  # subprocesses: a few seconds each
@pytest.mark.parametrize("fault", [
    "before:checkpoint.safetensors",  # inside the first checkpoint write: only a temporary file
    "after:checkpoint.safetensors",  # right after it
    "before:checkpoint.safetensors@3",  # inside a later one: the previous stays whole
    "before:model.safetensors",  # while finishing: checkpoint, no run.json
    "before:predictions.safetensors",  # the last file before run.json
    "before:run.json",  # every artifact written but the completion marker
])
def test_a_kill_at_a_write_resumes_to_the_same_weights(fault, reference, tmp_path):
    out = tmp_path / "run"
    args = ["train-teacher", "--out", str(out), *A, "--epochs", "3", "--checkpoint-every", "5"]
    killed = kdcli(*args, fault=fault)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "run.json").exists()
    kdcli(*args, "--resume", check=True)
    assert same_weights(reference, out) and stray(out) == []


@pytest.mark.slow  # subprocesses: a few seconds each
@pytest.mark.parametrize("leftover", [".checkpoint.safetensors.abcd1234.tmp", ".kdcli-abcd1234.tmp"])
@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_dir_holding_only_a_temporary_file_is_not_stuck(leftover, flag, tmp_path):
    out = tmp_path / "T1"
    out.mkdir()
    (out / leftover).write_bytes(b"half a checkpoint")
    kdcli("train-teacher", "--out", str(out), *A, "--epochs", "1", flag, check=True)
    assert (out / "run.json").exists() and stray(out) == []


@pytest.mark.slow  # subprocesses: a few seconds each
def test_an_older_two_file_checkpoint_is_refused_then_overwritten(tmp_path):
    import torch
    from safetensors.torch import save_file

    out = tmp_path / "old"  # as kdcli 0.1 left it: tensors, then the state beside them
    out.mkdir()
    save_file({"model.w": torch.zeros(2)}, str(out / "checkpoint.safetensors"),
              metadata={"format": "kdcli-train-state"})
    (out / "checkpoint.json").write_text('{"epoch": 1, "step": 12}')
    proc = kdcli("train-teacher", "--out", str(out), *A, "--epochs", "1", "--resume")
    assert proc.returncode == 1 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    kdcli("train-teacher", "--out", str(out), *A, "--epochs", "1", "--overwrite", check=True)
    assert not (out / "checkpoint.json").exists()


def test_a_damaged_checkpoint_is_named_before_any_work(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(Interrupted):
        train.run(tiny_config(out, epochs=3, checkpoint_every="10"), progress=InterruptAt(15))
    data = bytearray((out / "checkpoint.safetensors").read_bytes())
    data[-3] ^= 0x40  # bit rot in the last tensor
    (out / "checkpoint.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="do not match the sha256.*--overwrite"):
        train.run(tiny_config(out, epochs=3, checkpoint_every="10", resume=True))


# ---------------------------------------------------------------------------- 3: damaged artifacts


def test_damaged_completed_runs_are_not_skipped_and_not_counted(tmp_path):
    runs = {}
    for name in ("metrics_gone", "weights_damaged", "fine", "predictions_cut"):
        runs[name] = train.run(tiny_config(tmp_path / name, stage="train-teacher", epochs=1))
    (tmp_path / "metrics_gone" / "metrics.parquet").unlink()
    cut = tmp_path / "predictions_cut" / "predictions.safetensors"
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="predictions.safetensors.*bytes, run.json recorded"):
        train.run(tiny_config(tmp_path / "predictions_cut", stage="train-teacher", epochs=1))
    shutil.rmtree(tmp_path / "predictions_cut")
    w = tmp_path / "weights_damaged" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    for name in ("metrics_gone", "weights_damaged"):
        with pytest.raises(ArtifactError, match="--overwrite"):
            train.run(tiny_config(tmp_path / name, stage="train-teacher", epochs=1))
    assert train.run(tiny_config(tmp_path / "fine", stage="train-teacher", epochs=1)).skipped
    redone = train.run(tiny_config(tmp_path / "weights_damaged", stage="train-teacher", epochs=1,
                                   overwrite=True))
    assert same_weights(redone.run_dir, runs["fine"].run_dir)

    (tmp_path / "metrics_gone" / "metrics.parquet").write_bytes(b"")  # back, but truncated
    found = report.run(report.ReportConfig(root=str(tmp_path)))
    assert [Path(p).name for p, _ in found.scan.damaged] == ["metrics_gone"]
    w = tmp_path / "fine" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF  # same size: only --verify sees it
    w.write_bytes(bytes(data))
    assert len(report.run(report.ReportConfig(root=str(tmp_path))).scan.damaged) == 1
    verified = report.run(report.ReportConfig(root=str(tmp_path), verify=True))
    assert sorted(Path(p).name for p, _ in verified.scan.damaged) == ["fine", "metrics_gone"]


def test_a_damaged_logits_file_is_not_skipped_by_dump_logits(teacher_run, tmp_path):
    out = tmp_path / "l.parquet"
    cfg = DumpConfig(teacher=str(teacher_run), out=str(out), device="cpu")
    dump_logits.run(cfg)
    assert dump_logits.run(cfg).skipped
    data = bytearray(out.read_bytes())
    data[len(data) // 3: len(data) // 3 + 4] = b"\xff\xff\xff\x7f"  # four flipped bytes in the data
    out.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="damaged.*--overwrite"):
        dump_logits.run(cfg)
    dump_logits.run(DumpConfig(**{**cfg.__dict__, "overwrite": True}))
    assert dump_logits.run(cfg).skipped


# ---------------------------------------------------------------------------- 4: signals


@pytest.mark.slow  # subprocesses: a few seconds each
@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 75), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_says_so(sig, status, tmp_path):
    out = tmp_path / "run"
    args = ["train-teacher", "--out", str(out), *A, "--epochs", "2000", "--checkpoint-every", "1000",
            "--eval-every", "0"]  # 22,000 steps: far from done when the signal comes
    proc = subprocess.Popen([KDCLI, *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "Stopped:" in err and "--resume" in err
    said, total = map(int, re.search(rf"{signal.Signals(sig).name} at step (\d+) of (\d+)", err).groups())
    # the checkpoint is the one written at the signal, not the periodic one before it
    assert saved_progress(out)["step"] == said and 1000 < said < total
    assert not (out / "run.json").exists() and stray(out) == []


@pytest.mark.slow
def test_sigterm_then_resume_gives_the_uninterrupted_weights(tmp_path):
    args = ["train-teacher", *A, "--epochs", "150", "--checkpoint-every", "100", "--eval-every", "0"]
    kdcli(*args, "--out", str(tmp_path / "whole"), check=True)
    out = tmp_path / "run"
    proc = subprocess.Popen([KDCLI, *args, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 75 and 0 < saved_progress(out)["step"] < 1800
    kdcli(*args, "--out", str(out), "--resume", check=True)
    assert same_weights(tmp_path / "whole", out)


@pytest.mark.slow
def test_the_slurm_example_forwards_sigterm_and_requeues(tmp_path):
    """sweep.sbatch at the time limit (--signal=B:TERM signals only the batch script): the script
    passes SIGTERM on to kdcli, which checkpoints and exits 75, and the script, which slurm
    still counts as RUNNING, requeues its task. (tests/test_slurm.py runs it under a real slurm.)"""
    out = tmp_path / "out"
    kdcli("train-teacher", "--out", str(out / "teacher"), *A, "--epochs", "1", check=True)
    kdcli("dump-logits", "--teacher", str(out / "teacher"), "--out", str(out / "teacher_logits.parquet"),
          "--quiet", check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("scontrol", f'echo "$@" > {tmp_path}/requeued'), ("squeue", "echo RUNNING")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    examples = Path(__file__).resolve().parents[1] / "examples"
    env = {**os.environ, "KAPPAS": "0.5", "SEEDS": "0", "STUDENT_STEPS": "200000", "KDCLI": KDCLI,
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("KDCLI_FAULT", None)
    settings = out / "sweep.env"
    subprocess.run(["bash", "-c", f"source {examples}/settings.sh; settings_defaults; settings_write {settings}"],
                   env=env, check=True)
    task = {**env, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "77", "SLURM_JOB_ID": "78"}
    proc = subprocess.Popen(["bash", str(examples / "slurm" / "sweep.sbatch"), str(settings), "students"],
                            env=task, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    point = out / "kd" / "tau4" / "k0.5" / "s0"
    deadline = time.monotonic() + 120
    while not (point / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # to the batch script only, as --signal=B:TERM does
    log, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "77_0"]
    assert "checkpoint saved: requeued" in log and "exit status 75" in log
    assert saved_progress(point)["step"] >= 500 and not (point / "run.json").exists()


# ---------------------------------------------------------------------------- 5: one line, not a traceback


def one_line(proc) -> str:
    assert proc.returncode not in (0, None), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    return lines[0]


@pytest.mark.slow  # subprocesses: a few seconds each
def test_invalid_or_incomplete_run_json(teacher_run, tmp_path):
    bad = tmp_path / "bad"  # a run dir kdcli made (its lock file) whose run.json is damaged
    bad.mkdir()
    (bad / ".kdcli-lock").write_bytes(b"")
    (bad / "run.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"x")
    assert "unreadable run.json" in one_line(kdcli("train-teacher", "--out", str(bad), *A, "--epochs", "1"))
    kdcli("train-teacher", "--out", str(bad), *A, "--epochs", "1", "--overwrite", check=True)

    no_artifacts = tmp_path / "t"
    no_artifacts.mkdir()
    run = json.loads((teacher_run / "run.json").read_text())
    del run["artifacts"]
    (no_artifacts / "run.json").write_text(json.dumps(run))
    (no_artifacts / "model.safetensors").write_bytes((teacher_run / "model.safetensors").read_bytes())
    assert "without artifacts" in one_line(
        kdcli("dump-logits", "--teacher", str(no_artifacts), "--out", str(tmp_path / "l.parquet")))
    assert "without artifacts" in one_line(
        kdcli("cka", str(no_artifacts), str(teacher_run), "--out", str(tmp_path / "c.parquet")))


def test_a_run_json_without_dataset_is_listed_not_fatal(teacher_run, tmp_path):
    import shutil

    shutil.copytree(teacher_run, tmp_path / "ok")
    shutil.copytree(teacher_run, tmp_path / "broken")
    run = json.loads((tmp_path / "broken" / "run.json").read_text())
    del run["dataset"]
    (tmp_path / "broken" / "run.json").write_text(json.dumps(run))
    found = report.run(report.ReportConfig(root=str(tmp_path)))
    assert len(found.scan.runs) == 1
    ((path, why),) = found.scan.damaged
    assert Path(path).name == "broken" and "without dataset" in why


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kw):
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ArtifactError, match=r"checkpoint.safetensors: cannot write.*No space left"):
        train.run(tiny_config(tmp_path / "r", checkpoint_every="5"))
    monkeypatch.undo()

    from kdcli.io import atomic

    def enospc(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", enospc)
    with pytest.raises(ArtifactError, match=r"x\.json: cannot write \(No space left on device\)"):
        atomic.write_json(tmp_path / "x.json", {"a": 1})


@pytest.mark.slow  # subprocesses: a few seconds each
def test_a_failing_torch_import_is_one_line(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise MemoryError\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    env.pop("KDCLI_DEBUG", None)
    proc = subprocess.run([KDCLI, "train-teacher", "--out", str(tmp_path / "r"), *A], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "MemoryError" in one_line(proc)


# ---------------------------------------------------------------------------- 6: smaller findings


@pytest.mark.slow  # subprocesses: a few seconds each
def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(reference, tmp_path):
    out = tmp_path / "run"
    args = ["train-teacher", "--out", str(out), *A, "--epochs", "3", "--checkpoint-every", "0"]
    assert kdcli(*args, fault="before:metrics.parquet").returncode == -signal.SIGKILL
    assert (out / "model.safetensors").exists() and not (out / "checkpoint.safetensors").exists()
    kdcli(*args, "--resume", check=True)
    assert same_weights(reference, out)


def test_other_programs_folders_are_never_cleared(tmp_path):
    """model.safetensors and run.json are common names: without kdcli's own marks a folder is
    foreign, with --overwrite too."""
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (hf / "config.json").write_text("{}")
    (hf / ".cache.tmp").write_text("not ours")
    for overwrite in (False, True):
        with pytest.raises(ArtifactError, match="not a kdcli run directory"):
            train.run(tiny_config(hf, epochs=1, overwrite=overwrite))
    assert sorted(p.name for p in hf.iterdir()) == [".cache.tmp", "config.json", "model.safetensors"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"format": "someone-else"}))
    with pytest.raises(ArtifactError, match="not a kdcli run directory"):
        train.run(tiny_config(other, epochs=1, overwrite=True))


def test_a_run_json_without_artifacts_is_damaged_not_trusted(tmp_path):
    done = train.run(tiny_config(tmp_path / "r", epochs=1))
    run = json.loads((done.run_dir / "run.json").read_text())
    del run["artifacts"]
    (done.run_dir / "run.json").write_text(json.dumps(run))
    with pytest.raises(ArtifactError, match="without artifacts"):
        train.run(tiny_config(tmp_path / "r", epochs=1))
    assert report.run(report.ReportConfig(root=str(tmp_path))).scan.damaged


def test_a_second_writer_of_one_run_dir_is_refused(tmp_path):
    from kdcli.stages import rundir

    cfg = tiny_config(tmp_path / "r", epochs=1)
    with rundir.claim(cfg, "fresh"):  # another process writing it (a lock is per open file)
        with pytest.raises(ArtifactError, match="another kdcli process is writing"):
            train.run(cfg)
    assert not train.run(cfg).skipped


def test_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        res = train.run(tiny_config(tmp_path / "r", epochs=1))
    finally:
        os.umask(old)
    for p in res.run_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name


def test_the_same_teacher_by_another_path_resumes(teacher_run, tmp_path, monkeypatch):
    out = tmp_path / "s"
    kw = dict(kappa=0.5, epochs=3, checkpoint_every="3")
    with pytest.raises(Interrupted):
        train.run(tiny_config(out, teacher=str(teacher_run), **kw), progress=InterruptAt(10))
    monkeypatch.chdir(teacher_run.parent)
    res = train.run(tiny_config(out, teacher=teacher_run.name, resume=True, **kw))
    assert not res.skipped and res.rows[-1]["step"] == 15


def test_a_long_legal_file_name_is_written(teacher_run, tmp_path):
    out = tmp_path / ("l" * 240 + ".parquet")  # 248 characters
    dump_logits.run(DumpConfig(teacher=str(teacher_run), out=str(out), device="cpu"))
    assert out.exists() and stray(tmp_path) == []


def test_report_out_is_replaced_whole_or_refused(tmp_path, teacher_run):
    import shutil

    shutil.copytree(teacher_run, tmp_path / "runs" / "t")
    rep = tmp_path / "rep"
    report.run(report.ReportConfig(root=str(tmp_path / "runs"), out=str(rep)))
    (rep / "stale.csv").write_text("from an older report")
    report.run(report.ReportConfig(root=str(tmp_path / "runs"), out=str(rep)))
    assert not (rep / "stale.csv").exists() and (rep / "report.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ArtifactError, match="not a kdcli report folder"):
        report.run(report.ReportConfig(root=str(tmp_path / "runs"), out=str(mine)))
    assert (mine / "notes.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow  # subprocesses: a few seconds each
def test_a_report_killed_mid_write_keeps_the_old_one(tmp_path, teacher_run):
    import shutil

    shutil.copytree(teacher_run, tmp_path / "runs" / "t")
    rep = tmp_path / "rep"
    kdcli("report", str(tmp_path / "runs"), "--out", str(rep), "--no-plots", check=True)
    before = {p.name: p.read_bytes() for p in rep.iterdir()}
    killed = kdcli("report", str(tmp_path / "runs"), "--out", str(rep), "--no-plots",
                   fault="before:report.json")
    assert killed.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in rep.iterdir()} == before
    kdcli("report", str(tmp_path / "runs"), "--out", str(rep), "--no-plots", check=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------- a kill at random moments


@pytest.mark.slow
def test_twenty_random_kills_each_resume_to_the_same_weights(reference, tmp_path):
    rng = random.Random(20261206)
    args = ["train-teacher", *A, "--epochs", "3", "--checkpoint-every", "5"]

    def started(out: Path) -> subprocess.Popen:
        """The run, once it holds its run dir (imports and data loading are done)."""
        proc = subprocess.Popen([KDCLI, *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while not (out / ".kdcli-lock").exists() and proc.poll() is None:
            time.sleep(0.002)
        return proc

    timing = started(tmp_path / "timing")
    clock = time.monotonic()
    assert timing.wait() == 0
    duration = time.monotonic() - clock  # training and writing the artifacts
    for trial in range(20):
        out = tmp_path / f"k{trial}"
        proc = started(out)
        time.sleep(rng.uniform(0, duration))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kdcli(*args, "--out", str(out), "--resume", check=True)
        assert same_weights(reference, out), trial
        assert stray(out) == [], trial
