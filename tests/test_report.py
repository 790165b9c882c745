"""report: pairing, CI maths, and unpaired / duplicate / incomplete handling on synthetic run trees."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kdcli.errors import ConfigError
from kdcli.report.stats import bootstrap_ci, mean_ci, pearson, t_quantile_975
from kdcli.stages import report

BASE_CONFIG = {"seed": 0, "subset_seed": 0, "kappa": 0.1, "lr": 0.003, "steps": 100, "epochs": None,
               "batch_size": 128, "optimizer": "adamw", "model": "cnn1d", "label_smoothing": 0.0,
               "match_smoothing_tau": None, "out": "x", "teacher": "t", "logits": None, "augment": False}


def write_run(root: Path, name: str, *, stage: str, acc: float, kappa=0.1, seed=0, tau=None, alpha=1.0,
              eps=0.0, agreement=None, kl=None, teacher="T1", lr=0.003, run_id=None, task=None,
              loss=None) -> dict:
    run = {
        "format": "kdcli-run", "format_version": 1, "run_id": run_id or name.replace("/", "-"), "stage": stage,
        "config": {**BASE_CONFIG, "kappa": kappa, "seed": seed, "label_smoothing": eps, "lr": lr,
                   **({"tau": tau, "alpha": alpha} if stage == "distill" else {})},
        "dataset": {"name": "mnist1d", "fingerprint": "F"},
        "model": {"name": "cnn1d", "args": {"channels": 32}},
        "subset": {"kappa": kappa, "size": int(kappa * 1000), "seed": 0},
        "teacher": None if stage == "train-teacher" else {"run_id": teacher},
        "final": {"test_acc": acc, "test_loss": loss, "teacher_agreement": agreement, "teacher_kl": kl},
        "artifacts": {},
    }
    if task is not None:  # format 2 records the task; format 1 runs are classification
        run.update(format_version=2, task=task)
    if stage == "distill":
        run["kd"] = {"tau": tau, "alpha": alpha}
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(run))
    return run


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in list(range(1, 40)) + [50, 100, 1000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)


def test_mean_ci_matches_a_direct_computation():
    stats = pytest.importorskip("scipy.stats")
    x = [3.1, -0.4, 2.2, 5.0, 1.7]
    mean, lo, hi = mean_ci(x)
    sem = np.std(x, ddof=1) / math.sqrt(len(x))
    ref = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sem)
    assert mean == pytest.approx(np.mean(x))
    assert (lo, hi) == pytest.approx(ref, abs=1e-3)
    assert all(math.isnan(v) for v in mean_ci([1.0])[1:])


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    x = list(np.random.default_rng(0).normal(2.0, 1.0, 30))
    m, lo, hi = bootstrap_ci(x, 1000, seed=1)
    assert lo < m < hi and bootstrap_ci(x, 1000, seed=1) == (m, lo, hi)
    # width close to the normal-theory interval
    assert (hi - lo) == pytest.approx(2 * 1.96 * np.std(x, ddof=1) / math.sqrt(30), rel=0.25)


def test_pearson_against_numpy():
    x, y = [1.0, 2.0, 4.0, 3.5, 0.2], [0.3, 1.9, 3.0, 3.9, -1.0]
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_pairs_pi_and_ci(tmp_path):
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    kd_acc = {0: 0.60, 1: 0.55, 2: 0.62}
    lab_acc = {0: 0.50, 1: 0.49, 2: 0.51}
    for s in range(3):
        write_run(tmp_path, f"kd/s{s}", stage="distill", acc=kd_acc[s], seed=s, tau=4.0, agreement=0.7, kl=0.5)
        write_run(tmp_path, f"lab/s{s}", stage="train-labels", acc=lab_acc[s], seed=s, agreement=0.6, kl=0.9)
    res = report.run(report.ReportConfig(root=str(tmp_path), out=str(tmp_path / "rep")))
    (row,) = res.rows
    diffs = [100 * (kd_acc[s] - lab_acc[s]) for s in range(3)]
    sem = np.std(diffs, ddof=1) / math.sqrt(3)
    assert row["pairs"] == 3 and row["arm"] == "kd τ=4 α=1"
    assert row["pi"] == pytest.approx(np.mean(diffs))
    assert row["pi_lo"] == pytest.approx(np.mean(diffs) - 4.303 * sem, abs=1e-9)
    assert row["pi_hi"] == pytest.approx(np.mean(diffs) + 4.303 * sem, abs=1e-9)
    assert row["teacher_metric"] == pytest.approx(90.0) and row["metric"] == "test_acc"
    assert row["arm_agreement"] == pytest.approx(70.0) and row["labels_kl"] == pytest.approx(0.9)
    names = {p.name for p in res.written}
    assert {"pi_vs_kappa.csv", "report.md", "report.json", "pi_vs_kappa.png", "accuracy_vs_kappa.png"} <= names
    assert (tmp_path / "rep" / "pi_vs_kappa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unpaired_duplicates_incomplete_and_mismatched_settings(tmp_path):
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    write_run(tmp_path, "kd/a", stage="distill", acc=0.6, tau=4.0)
    write_run(tmp_path, "kd/b", stage="distill", acc=0.7, tau=4.0)  # same point again
    write_run(tmp_path, "lab/a", stage="train-labels", acc=0.5)
    write_run(tmp_path, "kd/lonely", stage="distill", acc=0.6, seed=5, tau=4.0)
    write_run(tmp_path, "kd/other-lr", stage="distill", acc=0.6, seed=6, tau=4.0, lr=0.1)
    write_run(tmp_path, "lab/other-lr", stage="train-labels", acc=0.5, seed=6, lr=0.2)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.json").write_text("{}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    (tmp_path / "cka_broken.parquet").write_bytes(b"PAR1 not really")
    res = report.run(report.ReportConfig(root=str(tmp_path)))
    (row,) = res.rows
    assert row["pairs"] == 1 and row["pi"] == pytest.approx(10.0)  # kd/a, the first by path
    assert [Path(r["dir"]).name for r in res.pairing.duplicates] == ["b"]
    unpaired = sorted(Path(r["dir"]).relative_to(tmp_path).as_posix() for r in res.pairing.unpaired)
    assert unpaired == ["kd/lonely", "kd/other-lr", "lab/other-lr"]
    assert res.scan.incomplete == [str(tmp_path / "broken")]
    # damaged files are listed with the reason, never skipped without a word
    ((bad, why),) = res.scan.damaged
    assert bad == str(tmp_path / "bad") and "unreadable run.json" in why
    ((cka, why),) = res.damaged_cka
    assert cka == str(tmp_path / "cka_broken.parquet") and "not a readable Parquet file" in why


def test_pi_follows_the_task_each_run_records(tmp_path):
    """A task whose primary metric is a loss (lower is better) gets PI as a relative reduction."""
    task = {"kind": "sequence", "outputs": 512, "subsets": "permutation", "primary": "test_loss",
            "higher_is_better": False, "pi": "relative_reduction", "masked": True}
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.0, run_id="T1", task=task, loss=2.0)
    for s, (kd, lab) in enumerate([(3.0, 4.0), (2.7, 3.0)]):
        write_run(tmp_path, f"kd/s{s}", stage="distill", acc=0.1, seed=s, tau=1.0, task=task, loss=kd)
        write_run(tmp_path, f"lab/s{s}", stage="train-labels", acc=0.1, seed=s, task=task, loss=lab)
    (row,) = report.run(report.ReportConfig(root=str(tmp_path))).rows
    assert row["metric"] == "test_loss" and row["pi_method"] == "relative_reduction"
    assert row["pi"] == pytest.approx(np.mean([100 * (4 - 3) / 4, 100 * (3 - 2.7) / 3]))
    assert row["arm_metric"] == pytest.approx(2.85) and row["teacher_metric"] == pytest.approx(2.0)


def test_tau_table_label_smoothing_and_filters(tmp_path):
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    for k in (0.1, 1.0):
        write_run(tmp_path, f"lab/{k}", stage="train-labels", acc=0.5, kappa=k)
        write_run(tmp_path, f"ls/{k}", stage="train-labels", acc=0.52, kappa=k, eps=0.1)
        for tau in (1.0, 4.0):
            write_run(tmp_path, f"kd/{tau}/{k}", stage="distill", acc=0.5 + tau / 100 + (k < 1) / 10,
                      kappa=k, tau=tau)
    res = report.run(report.ReportConfig(root=str(tmp_path), out=str(tmp_path / "rep")))
    (t,) = res.tau_tables
    assert t["taus"] == [1.0, 4.0] and t["kappas"] == [0.1, 1.0]
    np.testing.assert_allclose(t["pi"], [[11.0, 1.0], [14.0, 4.0]])
    assert res.ls_table[0]["ls ε=0.1"] == pytest.approx(2.0)
    assert (tmp_path / "rep" / "tau_kappa_heatmap.png").exists()
    only = report.run(report.ReportConfig(root=str(tmp_path), filters=("tau=4",)))
    assert {r["arm"] for r in only.rows} == {"kd τ=4 α=1", "ls ε=0.1"}  # runs without τ stay
    with pytest.raises(ConfigError, match="--filter"):
        report.run(report.ReportConfig(root=str(tmp_path), filters=("tau",)))


def test_two_thousand_runs(tmp_path):
    """A tree of 2,000 runs is reported (timing: benchmarks/report.py)."""
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    kappas = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    n = 0
    for k in kappas:
        for s in range(143):
            if n >= 1998:
                break
            write_run(tmp_path, f"kd/{k}/{s}", stage="distill", acc=0.6, kappa=k, seed=s, tau=4.0)
            write_run(tmp_path, f"lab/{k}/{s}", stage="train-labels", acc=0.5, kappa=k, seed=s)
            n += 2
    res = report.run(report.ReportConfig(root=str(tmp_path), plots=False))
    assert sum(r["pairs"] for r in res.rows) == 999
    assert all(r["pi"] == pytest.approx(10.0) for r in res.rows)


def test_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="ROOT"):
        report.run(report.ReportConfig(root=str(tmp_path / "nope")))


def test_pairs_with_different_settings_are_not_pooled(tmp_path):
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    for s in range(2):
        for lr, kd_acc in ((0.001, 0.6), (0.03, 0.4)):
            write_run(tmp_path, f"kd/{lr}/{s}", stage="distill", acc=kd_acc, seed=s, tau=4.0, lr=lr)
            write_run(tmp_path, f"lab/{lr}/{s}", stage="train-labels", acc=0.5, seed=s, lr=lr)
    res = report.run(report.ReportConfig(root=str(tmp_path)))
    assert res.group_by == ("lr",)
    assert sorted((r["lr"], round(r["pi"], 6), r["pairs"]) for r in res.rows) == [(0.001, 10.0, 2), (0.03, -10.0, 2)]


def test_steps_override_epochs_in_pairing_and_runs_without_teacher_are_listed(tmp_path):
    kd = write_run(tmp_path, "kd", stage="distill", acc=0.6, tau=4.0)
    kd["config"]["epochs"] = 40  # ignored: both ran --steps 100
    (tmp_path / "kd" / "run.json").write_text(json.dumps(kd))
    write_run(tmp_path, "lab", stage="train-labels", acc=0.5)
    lone = write_run(tmp_path, "lone", stage="train-labels", acc=0.5, seed=3)
    lone["teacher"] = None
    (tmp_path / "lone" / "run.json").write_text(json.dumps(lone))
    res = report.run(report.ReportConfig(root=str(tmp_path)))
    assert [r["pairs"] for r in res.rows] == [1]
    assert [Path(r["dir"]).name for r in res.pairing.no_teacher] == ["lone"]


def test_control_table_keeps_arms_missing_at_some_kappa(tmp_path):
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    for k in (0.1, 1.0):
        write_run(tmp_path, f"lab/{k}", stage="train-labels", acc=0.5, kappa=k)
        write_run(tmp_path, f"kd/{k}", stage="distill", acc=0.6, kappa=k, tau=4.0)
    write_run(tmp_path, "ls/0.1", stage="train-labels", acc=0.55, kappa=0.1, eps=0.2)
    res = report.run(report.ReportConfig(root=str(tmp_path), out=str(tmp_path / "rep")))
    assert math.isnan(res.ls_table[1]["ls ε=0.2"]) and res.ls_table[0]["ls ε=0.2"] == pytest.approx(5.0)
    assert "label smoothing control" in (tmp_path / "rep" / "report.md").read_text()
