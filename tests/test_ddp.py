"""One run over two processes with torchrun (DDP, gloo on the CPU): the same global batches as
one process, a rank that dies ends the job and the run resumes to the same weights, SIGTERM
saves a checkpoint, and the bad inputs of distributed runs."""

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
from safetensors.torch import load_file

from kdcli.train.state import saved_progress

pytestmark = pytest.mark.slow  # several torchrun launches: seconds each

BIN = Path(sys.executable).parent
DATA = ["--dataset", "mnist1d", "--dataset-arg", "n_train=600", "--dataset-arg", "n_test=200",
        "--model", "cnn1d", "--batch-size", "64", "--threads", "1", "--quiet", "--device", "cpu"]


def env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("KDCLI_FAULT", "WORLD_SIZE", "RANK", "LOCAL_RANK")}


def torchrun(*args: str, nproc: int = 2, **kw) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}",
                             str(BIN / "kdcli"), *args], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def run(*args: str, nproc: int | None = 2) -> subprocess.CompletedProcess:
    if nproc is None:
        return subprocess.run([str(BIN / "kdcli"), *args], env=env(), capture_output=True, text=True, timeout=300)
    p = torchrun(*args, nproc=nproc)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "teacher"
    assert run("train-teacher", "--out", str(out), *DATA, "--steps", "60", nproc=None).returncode == 0
    return out


@pytest.mark.parametrize("stage", ["train-teacher", "distill"])
def test_two_processes_follow_the_batches_of_one(stage, teacher, tmp_path):
    args = [stage, *DATA, "--steps", "40", "--eval-every", "20"]
    if stage == "distill":  # online: each process runs the teacher on its slice
        args = ["distill", "--teacher", str(teacher), "--kappa", "0.5", "--tau", "4", "--alpha", "0.5",
                "--steps", "40", "--batch-size", "64", "--threads", "1", "--quiet", "--device", "cpu"]
    one = run(*args, "--out", str(tmp_path / "one"), nproc=None)
    two = run(*args, "--out", str(tmp_path / "two"))
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    # the same batches; gradients summed in another order: equal to float rounding
    assert max_difference(tmp_path / "one", tmp_path / "two") < 1e-5
    run_json = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run_json["world"] == {"size": 2, "backend": "gloo"}
    assert json.loads((tmp_path / "one" / "run.json").read_text())["world"] == {"size": 1, "backend": None}
    one_final = json.loads((tmp_path / "one" / "run.json").read_text())["final"]
    assert run_json["final"]["test_acc"] == pytest.approx(one_final["test_acc"], abs=0.011)  # ≤ 2 of 200 samples
    assert run_json["final"]["train_loss"] == pytest.approx(one_final["train_loss"], rel=1e-4)  # both ranks' rows
    assert two.stdout.count("completed") == 1  # rank 0 alone reports


def _rank_pid(rank: int, out: Path) -> int:
    """The pid of torchrun's worker of `rank` writing `out` (torchrun itself has no RANK)."""
    for _ in range(600):
        for line in subprocess.run(["pgrep", "-f", "--", f"--out {out}($| )"], capture_output=True, text=True).stdout.split():
            try:
                environ = Path(f"/proc/{line}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(line)
        time.sleep(0.1)
    raise AssertionError("no such rank")


def test_a_dead_rank_ends_the_job_and_the_run_resumes_to_the_same_weights(tmp_path):
    args = ["train-teacher", *DATA, "--steps", "600", "--eval-every", "200", "--checkpoint-every", "20"]
    ref = run(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    job = torchrun(*args, "--out", str(out))
    while not (out / "checkpoint.safetensors").is_file():
        assert job.poll() is None, job.communicate()[1][-2000:]
        time.sleep(0.1)
    os.kill(_rank_pid(1, out), signal.SIGKILL)
    killed = time.monotonic()
    job.communicate(timeout=120)
    assert job.returncode != 0 and time.monotonic() - killed < 60  # no hang
    assert not (out / "run.json").exists()  # never looks complete
    resumed = run(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert max_difference(tmp_path / "ref", out) == 0  # two processes, the same order: bit for bit
    # the train metrics too: every process's running sums went into the checkpoint
    import pyarrow.parquet as pq

    ref_rows, rows = (pq.read_table(d / "metrics.parquet").to_pylist() for d in (tmp_path / "ref", out))
    for a, b in zip(ref_rows, rows, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6) and b["train_acc"] == a["train_acc"]
        assert b["test_acc"] == a["test_acc"]
    attempts = json.loads((out / "run.json").read_text())["attempts"]
    assert [a["outcome"] for a in attempts] == ["killed after its last checkpoint", "completed"]


def test_sigterm_saves_a_checkpoint_and_another_world_size_is_refused(tmp_path):
    out = tmp_path / "stopped"
    args = ["train-teacher", *DATA, "--batch-size", "48", "--steps", "20000", "--eval-every", "20000",
            "--checkpoint-every", "20000"]  # 48: divisible by 2 and 3 processes
    job = torchrun(*args, "--out", str(out))
    while not (out / ".kdcli-lock").exists():
        time.sleep(0.1)
    time.sleep(4)  # training
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=120)
    assert job.returncode != 0
    progress = saved_progress(out)
    assert progress["attempts"][-1]["outcome"] == "stopped (SIGTERM)" and progress["world_size"] == 2
    before = (out / "checkpoint.safetensors").read_bytes()
    for nproc, size in ((None, 1), (3, 3)):  # the world size is named; nothing touched
        refused = run(*args, "--out", str(out), "--resume", nproc=nproc)
        assert refused.returncode != 0
        assert f"checkpointed by a run over 2 process(es), this one has {size}" in refused.stderr
    assert (out / "checkpoint.safetensors").read_bytes() == before


def test_bad_distributed_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "r"
    bad = run("train-teacher", *DATA, "--batch-size", "63", "--steps", "5", "--out", str(out))
    assert bad.returncode != 0
    assert "Error: --batch-size 63: not divisible by the 2 processes torchrun started" in bad.stderr
    assert not out.exists()
    many = run("train-teacher", *DATA, "--steps", "5", "--out", str(tmp_path / "g"), "--grid", "seed=0,1",
               "--task-index", "all")
    assert "torchrun: one run spans the processes it starts" in many.stderr and not (tmp_path / "g").exists()


def test_compile_trains_like_eager_and_a_missing_compiler_is_one_line(tmp_path):
    """--compile on the CPU (inductor builds C++): the same run to float rounding; without a
    working compiler, one error line before anything is written."""
    args = ["train-teacher", *DATA, "--steps", "20", "--eval-every", "20"]
    plain = run(*args, "--out", str(tmp_path / "eager"), nproc=None)
    compiled = run(*args, "--out", str(tmp_path / "compiled"), "--compile", nproc=None)
    assert plain.returncode == 0 and compiled.returncode == 0, compiled.stderr[-2000:]
    assert max_difference(tmp_path / "eager", tmp_path / "compiled") < 1e-4
    broken = subprocess.run([str(BIN / "kdcli"), *args, "--out", str(tmp_path / "broken"), "--compile"],
                            env={**env(), "CXX": str(tmp_path / "no-such-compiler"),
                                 "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")},
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in broken.stderr.splitlines() if line.strip()]
    assert broken.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: --compile:"), broken.stderr
    assert not (tmp_path / "broken").exists()
