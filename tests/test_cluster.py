"""What a run sees on a cluster, without one: threads from what slurm gave the task, every
attempt at a run in run.json, a SIGTERM delivered twice, settings a sweep may change between
submissions (they don't change the weights), and the sweep settings file of the slurm scripts.
tests/test_slurm.py runs the scripts under a real slurm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from kdcli.stages import train
from kdcli.train.device import choose_threads
from kdcli.train.signals import StopOnSignal
from tests.conftest import InterruptAt, Interrupted, same_weights, tiny_config


@pytest.fixture(autouse=True)
def _sigint_raises():
    """Python's own SIGINT handler during each test: a shell that starts pytest in the
    background (`cmd &` without job control, nohup) passes SIGINT on as ignored, and the tests
    that expect Ctrl-C's KeyboardInterrupt would then see nothing."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
USABLE = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("env,expected", [
    ({}, 1),                                                         # outside slurm: one (benchmarks/sweep.py)
    ({"SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": "2"}, 1),    # --cpus-per-task
    ({"SLURM_CPUS_ON_NODE": "1"}, 1),                                # no --cpus-per-task: the job's CPUs
    ({"SLURM_CPUS_PER_TASK": "4096"}, USABLE),                       # never more than the affinity mask
    ({"SLURM_CPUS_PER_TASK": "", "SLURM_CPUS_ON_NODE": "x"}, 1),       # unreadable: ignored
])
def test_threads_from_what_slurm_gave_the_task(env, expected, monkeypatch):
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert choose_threads(None) == expected
    assert choose_threads(3) == 3  # --threads wins


def test_a_repeated_sigterm_is_the_same_request():
    """slurm signals every process of a job and the batch script forwards the signal too: the
    second SIGTERM must not end the process before its checkpoint. Another signal still acts."""
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_run_json_keeps_every_attempt(tmp_path, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(Interrupted):  # killed after its step-10 checkpoint
        train.run(tiny_config(out, checkpoint_every="5", eval_every="0"), progress=InterruptAt(12))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run = train.run(tiny_config(out, checkpoint_every="5", eval_every="0", resume=True)).run
    first, second = run["attempts"]
    assert (first["outcome"], first["first_step"], first["last_step"]) == ("killed after its last checkpoint", 0, 10)
    assert (second["outcome"], second["first_step"], second["last_step"]) == ("completed", 10, 20)
    assert [a["restart_count"] for a in run["attempts"]] == [0, 1]
    assert {a["slurm_job"] for a in run["attempts"]} == {"41_3"}
    assert first["started"] <= first["ended"] <= second["started"] <= second["ended"]
    assert run["provenance"]["started"] == second["started"]
    assert json.loads((out / "run.json").read_text())["attempts"] == run["attempts"]


def test_intervals_may_change_between_submissions(tmp_path):
    """--eval-every and --checkpoint-every change when a run writes, not what it learns: a sweep
    re-submitted with checkpoints turned on resumes and skips as before."""
    out = tmp_path / "r"
    with pytest.raises(Interrupted):
        train.run(tiny_config(out, checkpoint_every="5", eval_every="0"), progress=InterruptAt(12))
    resumed = train.run(tiny_config(out, checkpoint_every="3", eval_every="4", resume=True))
    assert not resumed.skipped
    whole = train.run(tiny_config(tmp_path / "whole", checkpoint_every="0", eval_every="0"))
    assert same_weights(whole.run_dir, out)
    assert train.run(tiny_config(out, checkpoint_every="0", eval_every="7")).skipped


def _settings(env: dict, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source {EXAMPLES}/settings.sh; {script}"],
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True)


def test_the_sweep_settings_file_is_the_sweep(tmp_path):
    """Written once with the settings of the first submission; sourcing it sets them, and refuses
    an environment that gives one of them another value (one line, naming it and the file)."""
    file = tmp_path / "sweep.env"
    made = _settings({"KAPPAS": "0.1 1", "SEEDS": "0"}, f"settings_defaults; settings_write {file}")
    assert made.returncode == 0, made.stderr
    same = _settings({"KAPPAS": "0.1 1"}, f"source {file}; echo \"$KAPPAS|$SEEDS|$TAU|$N_TRAIN\"")
    assert same.returncode == 0 and same.stdout == "0.1 1|0|4|10000\n", same.stderr
    other = _settings({"SEEDS": "0 1 2"}, f"source {file}; echo trained")
    assert other.returncode != 0 and other.stdout == ""
    assert other.stderr.count("\n") == 1 and other.stderr.startswith("Error: SEEDS='0 1 2' in the environment")
    assert f"SEEDS='0' ({file})" in other.stderr
    assert not list(tmp_path.glob("sweep.env.*"))  # written atomically, no temporary left


def test_nested_handlers_hand_an_unused_signal_to_the_sweep():
    """A sweep holds one StopOnSignal around its points: a signal a run caught but had nothing
    left to checkpoint for (its last step) stops the sweep before the next point; a second
    SIGINT still acts at once, as it would without kdcli."""
    with StopOnSignal() as sweep:
        with StopOnSignal() as run:
            os.kill(os.getpid(), signal.SIGTERM)
            assert run.signum == signal.SIGTERM and sweep.signum is None
        assert sweep.signum == signal.SIGTERM
    with StopOnSignal() as sweep:
        with StopOnSignal() as run:
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
