"""Every shipped example script runs as is, at tiny sizes (one test id each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KDCLI = str(Path(sys.executable).parent / "kdcli")
TINY = {"N_TRAIN": "300", "N_TEST": "200", "TEACHER_EPOCHS": "1", "STUDENT_STEPS": "3", "CHANNELS": "4",
        "KAPPAS": "0.1 1", "SEEDS": "0", "KDCLI": KDCLI}


def run_example(script: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **TINY, "OUT": str(tmp_path / "out"), **env}
    proc = subprocess.run(["bash", str(EXAMPLES / script), *args], env=full_env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def report_rows(out: Path) -> list[dict]:
    return json.loads((out / "report" / "report.json").read_text())["pi_vs_kappa"]


def test_kappa_sweep(tmp_path):
    proc = run_example("kappa_sweep.sh", tmp_path)
    rows = report_rows(tmp_path / "out")
    assert sorted(r["kappa"] for r in rows) == [0.1, 1.0]
    assert all(r["pairs"] == 1 for r in rows)
    assert "PI vs κ" in proc.stdout
    assert (tmp_path / "out" / "report" / "pi_vs_kappa.png").is_file()


@pytest.mark.slow
def test_kappa_beyond_one(tmp_path):
    run_example("kappa_beyond_one.sh", tmp_path, KAPPAS="0.5 2")
    rows = report_rows(tmp_path / "out")
    assert sorted(r["kappa"] for r in rows) == [0.5, 2.0]
    assert max(r["n_train"] for r in rows) == 600


@pytest.mark.slow
def test_temperature_ablation(tmp_path):
    run_example("temperature_ablation.sh", tmp_path, TAUS="1 4", ABLATION_KAPPAS="0.1")
    table = json.loads((tmp_path / "out" / "report" / "report.json").read_text())["tau_kappa"]
    assert [r["tau"] for r in table] == [1.0, 4.0]
    assert (tmp_path / "out" / "report" / "tau_kappa_heatmap.png").is_file()


@pytest.mark.slow
def test_label_smoothing_control(tmp_path):
    run_example("label_smoothing_control.sh", tmp_path, KAPPAS="0.1")
    arms = {r["arm"] for r in report_rows(tmp_path / "out")}
    assert arms == {"kd τ=4 α=1", "ls matched τ=4"}


@pytest.mark.slow
def test_cifar10_smoke(tmp_path):
    data = SHARED_DATA / "cifar10-jpeg"
    if not (data / "train.parquet").is_file():
        pytest.skip(f"{data} is absent (the real CIFAR-10 JPEG copy lives beside the project)")
    run_example("cifar10.sh", tmp_path, "--smoke", DATA_DIR=str(data), TEACHER_STEPS="2", STUDENT_STEPS="2",
                KAPPAS="0.01 1", SEEDS="0 1")
    rows = report_rows(tmp_path / "out-smoke")
    assert [r["kappa"] for r in rows] == [0.01, 1.0] and {r["pairs"] for r in rows} == {2}
    saved = json.loads((tmp_path / "out-smoke" / "report" / "report.json").read_text())
    assert len(saved["bias_variance"]) == 2 and len(saved["kappa_star"]) == 1  # two seeds, two κ
    assert (tmp_path / "out-smoke" / "report" / "bias_variance_vs_kappa.png").is_file()


@pytest.mark.slow
def test_lm_kappa_sweep_tiny(tmp_path):
    """The LM example at tiny sizes on tinyshakespeare (a subset of the complete works: the
    example itself trains and tests on the complete works only)."""
    data = SHARED_DATA / "text"
    if not (data / "tinyshakespeare.txt").is_file():
        pytest.skip(f"{data} is absent (the text corpora live beside the project)")
    run_example("lm_kappa_sweep.sh", tmp_path, DATA=str(data), FILES="tinyshakespeare.txt", VOCAB="512",
                BLOCK="32", TEACHER="n_layer=1 n_head=2 n_embd=16", SMALL="n_layer=1 n_head=1 n_embd=8",
                TEACHER_STEPS="5", STUDENT_STEPS="3", KAPPAS="0.1 1", SEEDS="0", TOPK="4", TOPK_KAPPAS="0.1",
                OOD="moby_dick.txt")
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    rows = report["pi_vs_kappa_lm"]
    online = [r for r in rows if r["arm"].endswith("online")]
    # two settings (self-distillation and the small student) × two κ, one pair each
    assert sorted((r["model"], r["kappa"]) for r in online) == sorted(
        (m, k) for m in {r["model"] for r in online} for k in (0.1, 1.0)) and len(online) == 4
    assert {r["arm"] for r in rows} >= {"kd τ=1 α=1 top-4", "kd τ=1 α=1 top-4 bucket"}
    assert all(r["metric"] == "test_loss" and r["ood_pi"] is not None for r in rows)
    assert (tmp_path / "out" / "report" / "pi_vs_kappa_lm.png").is_file()




@pytest.mark.slow
def test_cka_alignment(tmp_path):
    run_example("cka_alignment.sh", tmp_path, KAPPAS="0.1")
    cka = json.loads((tmp_path / "out" / "report" / "report.json").read_text())["cka_vs_kappa"]
    assert {(r["arm"], r["estimator"]) for r in cka} == {
        ("kd τ=4 α=1", "linear"), ("kd τ=4 α=1", "debiased"), ("labels", "linear"), ("labels", "debiased")}
    assert all(0 <= r["cka"] <= 1 for r in cka if r["estimator"] == "linear")
    assert (tmp_path / "out" / "report" / "cka_vs_kappa.png").is_file()


@pytest.mark.slow
def test_teacher_quality(tmp_path):
    """Two teachers of different epoch budgets: a κ* row each with its teacher's accuracy, and
    the κ*-vs-teacher plot."""
    run_example("teacher_quality.sh", tmp_path, TEACHER_EPOCHS_LIST="1 2", KAPPAS="0.1 1", SEEDS="0 1")
    saved = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    stars = saved["kappa_star"]
    assert len(stars) == 2 and len({r["teacher"] for r in stars}) == 2
    teachers = {}
    for epochs in ("1", "2"):  # each teacher's own final test accuracy, in percent
        run = json.loads((tmp_path / "out" / f"e{epochs}" / "teacher" / "run.json").read_text())
        teachers[run["run_id"]] = pytest.approx(100 * run["final"]["test_acc"])
    assert {r["teacher"]: r["teacher_metric"] for r in stars} == teachers
    assert (tmp_path / "out" / "report" / "kappa_star_vs_teacher.png").is_file()


@pytest.mark.slow
def test_student_capacity(tmp_path):
    """Students of two widths and the ViT student, each with its twins and κ* row."""
    run_example("student_capacity.sh", tmp_path, STUDENTS="cnn1d:channels=2 cnn1d:channels=4 vit:dim=8,depth=1",
                KAPPAS="0.1 1", SEEDS="0 1")
    saved = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert {r["model"] for r in saved["kappa_star"]} == {"cnn1d channels=2", "cnn1d channels=4", "vit"}
    sizes = {r["model"]: r["student_parameters"] for r in saved["kappa_star"]}
    assert sizes["cnn1d channels=2"] < sizes["cnn1d channels=4"]
    assert (tmp_path / "out" / "report" / "kappa_star_vs_student.png").is_file()


@pytest.mark.slow
def test_cross_distribution(tmp_path):
    """Students of the shifted data with their own teacher and, online, the reference one."""
    run_example("cross_distribution.sh", tmp_path, KAPPAS="0.1 1")
    out = tmp_path / "out"
    rows = report_rows(out)
    assert {r["arm"] for r in rows} == {"kd τ=4 α=1", "kd τ=4 α=1 online cross-dataset"}
    cross = json.loads((out / "cross" / "kd" / "tau4" / "k0.1" / "s0" / "run.json").read_text())
    source = json.loads((out / "source" / "teacher" / "run.json").read_text())
    target = json.loads((out / "target" / "teacher" / "run.json").read_text())
    assert cross["config"]["cross_dataset"] is True
    assert cross["teacher"]["dataset_fingerprint"] == source["dataset"]["fingerprint"]
    assert cross["dataset"]["fingerprint"] == target["dataset"]["fingerprint"] != source["dataset"]["fingerprint"]


@pytest.mark.slow
def test_neural_collapse(tmp_path):
    run_example("neural_collapse.sh", tmp_path, KAPPAS="0.1 1", SEEDS="0 1")
    saved = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    rows = saved["collapse"]
    assert {(r["split"], r["kappa"]) for r in rows} == {(s, k) for s in ("seen", "test") for k in (0.1, 1.0)}
    assert all(r["pairs"] == 2 for r in rows)
    assert (tmp_path / "out" / "report" / "collapse_vs_kappa.png").is_file()
