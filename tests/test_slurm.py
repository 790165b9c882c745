"""The shipped slurm scripts under a real one-node slurm (tests/slurm_cluster.py): the sweep
submitted at tiny sizes, one task requeued and one preempted with SIGTERM mid-run, both
resumed to the weights of uninterrupted twins; a re-submission that changes nothing; a
re-submission with other settings refused; a failed task that cancels the report."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import weights
from tests.slurm_cluster import Cluster, missing

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KDCLI = str(Path(sys.executable).parent / "kdcli")
TINY = {"N_TRAIN": "500", "N_TEST": "200", "TEACHER_EPOCHS": "2", "CHANNELS": "8", "STUDENT_STEPS": "4000",
        "KAPPAS": "0.1 1", "SEEDS": "0", "CHECKPOINT_EVERY": "200", "KDCLI": KDCLI}
STUDENTS = ("kd/tau4/k0.1/s0", "labels/k0.1/s0", "kd/tau4/k1/s0", "labels/k1/s0")  # array tasks 0-3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if absent := missing():
        pytest.skip(f"slurm is not installed ({', '.join(absent)}); .ci/run installs slurm-wlm and munge")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield c.start()
    finally:
        c.stop()


def submit(cluster: Cluster, out: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = cluster.run("bash", str(EXAMPLES / "slurm" / "submit.sh"), check=False,
                       env={**TINY, "OUT": str(out), **env})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def job_ids(proc) -> tuple[str, str, str]:
    """The teacher, student array and report jobs submit.sh reports."""
    found = re.search(r"teacher job (\d+), student array (\d+) .*, report job (\d+);", proc.stdout)
    assert found, proc.stdout
    return found.groups()


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def wait_for_text(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{path} does not say {text!r}"
        time.sleep(0.05)


def snapshot(out: Path) -> dict[str, str]:
    """sha256 of every file of the sweep but its logs and report."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.relative_to(out).parts[0] not in ("logs", "report")}


def states(cluster: Cluster, *ids: str) -> list[str]:
    """Each job's state, array tasks in task order."""
    return [j["JobState"] for jid in ids
            for j in sorted(cluster.jobs(jid), key=lambda j: int(j.get("ArrayTaskId", 0)))]


def test_the_sweep_survives_requeue_and_preemption(cluster, tmp_path):
    out = tmp_path / "sweep"
    teacher, array, report = job_ids(submit(cluster, out))

    # preempted with SIGTERM to the whole job (as a preemption's grace signal; `--signal=B:TERM`
    # warns only the script before the time limit, which passes it on): kdcli checkpoints and
    # exits 75, and the script requeues the task itself
    wait_for(out / STUDENTS[1] / "checkpoint.safetensors")
    # slurm 22.05 delivers the signal at once, but answers "Job can not be altered now" for a
    # batch job without job steps, and scancel retries for minutes: stopped once it has worked
    scancel = subprocess.Popen(["scancel", "--full", "--signal=TERM", f"{array}_1"], env=cluster.env,
                               stderr=subprocess.DEVNULL)
    wait_for_text(out / "logs" / f"students-{array}_1.out", "checkpoint saved: requeued")
    scancel.kill()
    # requeued mid-run (scontrol requeue; a preemption in REQUEUE mode is the same): slurm sends
    # SIGTERM to every process of the job, kdcli saves a checkpoint, slurm queues the task again
    wait_for(out / STUDENTS[0] / "checkpoint.safetensors")
    cluster.retry("scontrol", "requeue", f"{array}_0")
    cluster.wait_done(teacher, array, report)
    assert states(cluster, teacher, array, report) == ["COMPLETED"] * 6

    for i, student in enumerate(STUDENTS):
        attempts = json.loads((out / student / "run.json").read_text())["attempts"]
        if i < 2:  # stopped once, resumed from the checkpoint it saved at the signal
            assert [a["outcome"] for a in attempts] == ["stopped (SIGTERM)", "completed"], attempts
            assert [a["restart_count"] for a in attempts] == [0, 1]
            assert 0 < attempts[0]["last_step"] == attempts[1]["first_step"] < 4000
            assert {a["slurm_job"] for a in attempts} == {f"{array}_{i}"}
        else:
            assert [a["outcome"] for a in attempts] == ["completed"]
    log = (out / "logs" / f"students-{array}_1.out").read_text()
    assert "checkpoint saved: requeued" in log and "(restart 1)" in log and "exit status 0" in log
    assert "resumed at step" in log  # kdcli's one line per run under --quiet
    rows = json.loads((out / "report" / "report.json").read_text())["pi_vs_kappa"]
    assert sorted((r["kappa"], r["pairs"]) for r in rows) == [(0.1, 1), (1.0, 1)]

    # each student equals its uninterrupted twin: the same commands outside slurm, one thread
    twin = tmp_path / "twin"
    twin.mkdir()
    for name in ("teacher", "teacher_logits.parquet"):
        os.symlink(out / name, twin / name)
    env = {**cluster.env, **TINY, "OUT": str(twin), "SLURM_CPUS_PER_TASK": "1"}
    twins = [subprocess.Popen(["bash", "-c", f"source {EXAMPLES}/_common.sh; {runs}"], env=env)
             for runs in ("kd_student 0.1 0 4; kd_student 1 0 4", "labels_student 0.1 0; labels_student 1 0")]
    assert [p.wait(timeout=300) for p in twins] == [0, 0]
    for student in STUDENTS:
        a, b = weights(out / student), weights(twin / student)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), student

    # re-submitted as it was: every run skipped, every file unchanged
    before = snapshot(out)
    ids = job_ids(submit(cluster, out))
    cluster.wait_done(*ids)
    assert states(cluster, *ids) == ["COMPLETED"] * 6
    assert snapshot(out) == before
    assert "already complete" in (out / "logs" / f"students-{ids[1]}_0.out").read_text()

    # re-submitted with other settings: refused before anything is submitted
    queued = cluster.run("squeue", "-h").stdout
    proc = submit(cluster, out, check=False, KAPPAS="0.1 0.5")
    assert proc.returncode != 0 and proc.stdout == ""
    assert "KAPPAS='0.1 0.5' in the environment" in proc.stderr and "KAPPAS='0.1 1'" in proc.stderr
    assert cluster.run("squeue", "-h").stdout == queued and snapshot(out) == before

    # a task that fails (a damaged run dir) cancels the report instead of leaving it pending forever
    (out / STUDENTS[3] / "metrics.parquet").write_bytes(b"damaged")
    teacher, array, report = job_ids(submit(cluster, out))
    cluster.wait_done(teacher, array, report)
    assert states(cluster, array) == ["COMPLETED"] * 3 + ["FAILED"]
    assert states(cluster, report) == ["CANCELLED"]
    assert "Error:" in (out / "logs" / f"students-{array}_3.out").read_text()
