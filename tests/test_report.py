"""report: pairing, CI maths, and unpaired / duplicate / incomplete handling on synthetic run trees."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from kdcli.errors import ConfigError
from kdcli.report.stats import bootstrap_ci, mean_ci, pearson, t_quantile_975
from kdcli.stages import report
from kdcli.task import Task

BASE_CONFIG = {"seed": 0, "subset_seed": 0, "kappa": 0.1, "lr": 0.003, "steps": 100, "epochs": None,
               "batch_size": 128, "optimizer": "adamw", "model": "cnn1d", "label_smoothing": 0.0,
               "match_smoothing_tau": None, "out": "x", "teacher": "t", "logits": None, "augment": False}


def write_run(root: Path, name: str, *, stage: str, acc: float, kappa=0.1, seed=0, tau=None, alpha=1.0,
              eps=0.0, agreement=None, kl=None, teacher="T1", lr=0.003, run_id=None, task=None,
              loss=None, final=None, dataset="mnist1d", model="cnn1d", channels=32) -> dict:
    run = {
        "format": "kdcli-run", "format_version": 1, "run_id": run_id or name.replace("/", "-"), "stage": stage,
        "config": {**BASE_CONFIG, "kappa": kappa, "seed": seed, "label_smoothing": eps, "lr": lr, "model": model,
                   **({"tau": tau, "alpha": alpha} if stage == "distill" else {})},
        "dataset": {"name": dataset, "fingerprint": "F" if dataset == "mnist1d" else f"F-{dataset}"},
        "model": {"name": model, "args": {"channels": channels}},
        "subset": {"kappa": kappa, "size": int(kappa * 1000), "seed": 0},
        "teacher": None if stage == "train-teacher" else {"run_id": teacher},
        "final": {"test_acc": acc, "test_loss": loss, "teacher_agreement": agreement, "teacher_kl": kl,
                  **(final or {})},
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
    ((cka, why),) = res.damaged_files
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


# ---------------------------------------------------------------------------- language models

LM_TASK = Task("sequence", 512, "permutation", primary="test_loss", pi="relative_reduction",
               masked=True).describe()
LM_KEYS = {"ppl_reduction", "ppl_reduction_lo", "ppl_reduction_hi", "acc_change", "acc_change_lo",
           "acc_change_hi", "arm_bpb", "labels_bpb", "ood_pi", "ood_pi_lo", "ood_pi_hi"}


def write_lm_run(root: Path, name: str, *, stage: str, loss: float, acc: float, bpb: float, ood=None,
                 **kw) -> dict:
    """A language-model run as the gpt/token datasets record it: per-token CE (nats), top-1 token
    accuracy, perplexity, bits per byte, and the OOD text's metrics when given."""
    final = {"test_ppl": math.exp(loss), "test_bpb": bpb}
    if ood is not None:
        final.update(ood_test_loss=ood, ood_test_acc=acc / 2, ood_test_ppl=math.exp(ood), ood_test_bpb=bpb * 1.2)
    return write_run(root, name, stage=stage, acc=acc, loss=loss, task=LM_TASK, final=final,
                     dataset="tinytext", model="gpt", **{"teacher": "LMT", **kw})


def t_interval(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval, float64 (t_{0.975} from the same tables the tests above use)."""
    v = np.asarray(values, dtype=np.float64)
    half = {2: 4.303, 3: 3.182}[len(v) - 1] * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


def lm_tree(root: Path, seeds=3, ood_missing_at=1.0) -> dict:
    """LM teacher, label students, KD students at τ = 1 and 2, a smoothing arm, κ ∈ {0.1, 1};
    returns the metrics written, by (stage/arm, κ, seed). One label run at `ood_missing_at`
    has no OOD metrics."""
    rng = np.random.default_rng(7)
    write_lm_run(root, "lm/teacher", stage="train-teacher", loss=2.0, acc=0.5, bpb=0.9, run_id="LMT")
    written = {}
    for k in (0.1, 1.0):
        for s in range(seeds):
            lab = dict(loss=3.5 + rng.uniform(-0.2, 0.2), acc=0.30 + rng.uniform(-0.02, 0.02),
                       bpb=1.4 + rng.uniform(-0.1, 0.1), ood=4.0 + rng.uniform(-0.3, 0.3))
            if k == ood_missing_at and s == 1:
                lab["ood"] = None
            written[("labels", k, s)] = lab
            write_lm_run(root, f"lm/lab/{k}/{s}", stage="train-labels", kappa=k, seed=s, agreement=0.4, kl=0.8,
                         **lab)
            for tau in (1.0, 2.0):
                kd = dict(loss=lab["loss"] - rng.uniform(0.0, 0.4), acc=lab["acc"] + rng.uniform(-0.01, 0.03),
                          bpb=lab["bpb"] - rng.uniform(0.0, 0.1), ood=4.0 + rng.uniform(-0.4, 0.2))
                written[(f"kd τ={tau:g} α=1", k, s)] = kd
                write_lm_run(root, f"lm/kd/{tau}/{k}/{s}", stage="distill", kappa=k, seed=s, tau=tau,
                             agreement=0.5 + rng.uniform(0, 0.1), kl=0.5, **kd)
            ls = dict(loss=lab["loss"] - 0.05, acc=lab["acc"], bpb=lab["bpb"], ood=None)
            write_lm_run(root, f"lm/ls/{k}/{s}", stage="train-labels", kappa=k, seed=s, eps=0.1, agreement=0.41,
                         kl=0.7, **ls)
    return written


def test_language_model_rows_ppl_token_accuracy_bpb_and_ood(tmp_path):
    written = lm_tree(tmp_path)
    res = report.run(report.ReportConfig(root=str(tmp_path)))
    assert [k.kind for k in res.kinds] == ["sequence"]
    rows = {(r["arm"], r["kappa"]): r for r in res.rows}
    for (arm, k), row in rows.items():
        if not arm.startswith("kd"):
            continue
        lab = [written[("labels", k, s)] for s in range(3)]
        kd = [written[(arm, k, s)] for s in range(3)]
        ce_lab, ce_kd = (np.array([m["loss"] for m in ms], dtype=np.float64) for ms in (lab, kd))
        acc_lab, acc_kd = (np.array([m["acc"] for m in ms], dtype=np.float64) for ms in (lab, kd))
        assert row["metric"] == "test_loss" and row["pairs"] == 3
        np.testing.assert_allclose([row["pi"], row["pi_lo"], row["pi_hi"]],
                                   t_interval(100 * (ce_lab - ce_kd) / ce_lab), rtol=1e-12)
        ppl = 100 * (1 - np.exp(ce_kd) / np.exp(ce_lab))  # 100·(1 − ppl_kd/ppl_labels)
        np.testing.assert_allclose([row["ppl_reduction"], row["ppl_reduction_lo"], row["ppl_reduction_hi"]],
                                   t_interval(ppl), rtol=1e-12)
        np.testing.assert_allclose([row["acc_change"], row["acc_change_lo"], row["acc_change_hi"]],
                                   t_interval(100 * (acc_kd - acc_lab)), rtol=1e-12, atol=1e-12)
        assert row["arm_bpb"] == pytest.approx(np.mean([m["bpb"] for m in kd]), rel=1e-12)
        assert row["labels_bpb"] == pytest.approx(np.mean([m["bpb"] for m in lab]), rel=1e-12)
        if k == 0.1:  # every run has the OOD text's loss
            ood_lab, ood_kd = (np.array([m["ood"] for m in ms], dtype=np.float64) for ms in (lab, kd))
            np.testing.assert_allclose([row["ood_pi"], row["ood_pi_lo"], row["ood_pi_hi"]],
                                       t_interval(100 * (ood_lab - ood_kd) / ood_lab), rtol=1e-12)
        else:  # one label run lacks it: no OOD PI for that row
            assert row["ood_pi"] is row["ood_pi_lo"] is row["ood_pi_hi"] is None
    # the smoothing arm has no OOD metrics at all
    assert rows[("ls ε=0.1", 0.1)]["ood_pi"] is None
    assert all(LM_KEYS <= set(r) for r in res.rows)

    # --bootstrap: the same resampling as PI, per column
    boot = report.run(report.ReportConfig(root=str(tmp_path), bootstrap=400))
    row = next(r for r in boot.rows if r["arm"] == "kd τ=2 α=1" and r["kappa"] == 0.1)
    ce_lab = [written[("labels", 0.1, s)]["loss"] for s in range(3)]
    ce_kd = [written[("kd τ=2 α=1", 0.1, s)]["loss"] for s in range(3)]
    ppl = [100 * (1 - math.exp(b - a)) for a, b in zip(ce_lab, ce_kd)]
    assert row["ci"] == "bootstrap"
    # reference: the documented resampling (seed 0, 400 means of n draws with replacement,
    # linear 2.5% / 97.5% percentiles), written out here
    rng = random.Random(0)
    means = np.sort([sum(rng.choices(ppl, k=3)) / 3 for _ in range(400)])
    expected = (np.mean(ppl), *np.percentile(means, [2.5, 97.5]))  # numpy's default is linear
    assert (row["ppl_reduction"], row["ppl_reduction_lo"], row["ppl_reduction_hi"]) == \
        pytest.approx(expected, rel=1e-9)
    assert row["ppl_reduction_lo"] <= row["ppl_reduction"] <= row["ppl_reduction_hi"]


def test_one_pair_gives_lm_columns_without_intervals(tmp_path):
    write_lm_run(tmp_path, "lab", stage="train-labels", loss=3.0, acc=0.2, bpb=1.5, ood=4.0)
    write_lm_run(tmp_path, "kd", stage="distill", loss=2.7, acc=0.25, bpb=1.3, ood=3.6, tau=1.0)
    (row,) = report.run(report.ReportConfig(root=str(tmp_path))).rows
    assert row["ppl_reduction"] == pytest.approx(100 * (1 - math.exp(-0.3)))
    assert row["acc_change"] == pytest.approx(5.0) and row["ood_pi"] == pytest.approx(10.0)
    assert all(math.isnan(row[k]) for k in ("ppl_reduction_lo", "acc_change_hi", "ood_pi_lo"))
    assert math.isnan(row["teacher_metric"])  # the LM teacher is not in the tree


def _cls_tree(root: Path) -> None:
    """The classification tree of test_tau_table_label_smoothing_and_filters, three seeds."""
    write_run(root, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    for k in (0.1, 1.0):
        for s in range(3):
            write_run(root, f"lab/{k}/{s}", stage="train-labels", acc=0.5 + s / 100, kappa=k, seed=s,
                      agreement=0.6, kl=0.9)
            write_run(root, f"ls/{k}/{s}", stage="train-labels", acc=0.52, kappa=k, seed=s, eps=0.1,
                      agreement=0.6, kl=0.8)
            for tau in (1.0, 4.0):
                write_run(root, f"kd/{tau}/{k}/{s}", stage="distill", acc=0.5 + tau / 100 + s * s / 300,
                          kappa=k, seed=s, tau=tau, agreement=0.7 + s / 50, kl=0.5)


def _cka_file(path: Path, a: str, b: str, value: float) -> None:
    from kdcli.io.cka import CKA_FORMAT_VERSION, write_cka

    row = {"layer_a": "features", "layer_b": "features", "estimator": "linear", "value": value,
           "ci_low": None, "ci_high": None, "n": 100, "d_a": 8, "d_b": 8, "batches": None}
    write_cka(path, [row], {"format": "kdcli-cka", "format_version": CKA_FORMAT_VERSION,
                            "run_a_id": a, "run_b_id": b})


def _cli_report(root: Path, out: Path, monkeypatch) -> str:
    from typer.testing import CliRunner

    from kdcli.cli import display
    from kdcli.cli.main import app

    monkeypatch.setattr(display.console, "width", 320)  # no folded columns
    res = CliRunner().invoke(app, ["report", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return res.stdout


def test_mixed_tree_splits_every_table_and_plot_by_task_and_keeps_classification_output(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _cls_tree(root)
    _cka_file(root / "cka_cls.parquet", "T1", "kd-4.0-0.1-0", 0.8)
    alone = _cli_report(root, tmp_path / "alone", monkeypatch)
    cls_only = report.run(report.ReportConfig(root=str(root)))

    lm_tree(root)
    _cka_file(root / "cka_lm.parquet", "LMT", "lm-kd-1.0-0.1-0", 0.6)
    mixed = _cli_report(root, tmp_path / "mixed", monkeypatch)
    res = report.run(report.ReportConfig(root=str(root)))

    # rows: one kind each, never pooled; classification rows exactly as without the LM runs
    cls, lm = res.kinds
    assert (cls.kind, lm.kind) == ("classification", "sequence") and res.rows == cls.rows + lm.rows
    assert cls.rows == cls_only.rows and not any(LM_KEYS & set(r) for r in cls.rows)
    assert {r["metric"] for r in lm.rows} == {"test_loss"} and all(LM_KEYS <= set(r) for r in lm.rows)
    assert {r["teacher"] for r in cls.rows} == {"T1"} and {r["teacher"] for r in lm.rows} == {"LMT"}
    assert [len(k.tau_tables) for k in res.kinds] == [1, 1] and cls.ls_table == cls_only.ls_table
    assert cls.fidelity == cls_only.kinds[0].fidelity and set(lm.fidelity) == {"kd τ=1 α=1", "kd τ=2 α=1", "ls ε=0.1"}
    assert [r["cka"] for r in cls.cka_rows] == [0.8] and [r["cka"] for r in lm.cka_rows] == [0.6]

    # files: the classification ones byte for byte as before; the LM ones beside them, named _lm
    a, b = tmp_path / "alone", tmp_path / "mixed"
    for name in ("pi_vs_kappa.csv", "tau_kappa.csv", "label_smoothing_control.csv", "fidelity_correlation.csv",
                 "cka_vs_kappa.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    lm_files = {p.name for p in b.iterdir()} - {p.name for p in a.iterdir()}
    assert lm_files == {"pi_vs_kappa_lm.csv", "tau_kappa_lm.csv", "label_smoothing_control_lm.csv",
                        "fidelity_correlation_lm.csv", "cka_vs_kappa_lm.csv", "pi_vs_kappa_lm.png",
                        "ce_vs_kappa_lm.png", "ppl_acc_vs_kappa_lm.png", "fidelity_vs_pi_lm.png",
                        "tau_kappa_heatmap_lm.png", "cka_vs_kappa_lm.png", "kappa_star_lm.csv"}
    header = (b / "pi_vs_kappa_lm.csv").read_text().splitlines()[0].split(",")
    assert LM_KEYS <= set(header) and "ppl_reduction" not in (b / "pi_vs_kappa.csv").read_text()
    ja, jb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    for key in ("pi_vs_kappa", "tau_kappa", "label_smoothing_control", "fidelity_correlation", "cka_vs_kappa"):
        assert ja[key] == jb[key], key
        assert f"{key}_lm" in jb and f"{key}_lm" not in ja
    assert len(jb["pi_vs_kappa_lm"]) == len(lm.rows)

    # Markdown: the classification section as it was, then a section of its own for language models
    md_a, md_b = ((d / "report.md").read_text() for d in (a, b))
    head = "# kdcli report\n\n"
    assert md_a.startswith(head + "PI = acc(arm) − acc(labels) (points), mean and 95% CI")
    assert md_b.startswith(head + "# Classification\n\n" + md_a[len(head):])
    lm_md = md_b[len(head + "# Classification\n\n" + md_a[len(head):]):]
    assert lm_md.startswith("# Language models (sequence tasks)")
    assert "## pi vs kappa (language models) — PI: relative test CE reduction (%)" in lm_md
    for col in ("PI (rel. CE reduction %)", "ppl red. %", "Δtop-1 (pts)", "bpb arm/labels", "OOD PI %"):
        assert f"| {col} |" in lm_md, col
    assert "acc(arm)" not in lm_md

    # terminal: the classification tables as they were, then the language models'
    table_a = alone.rsplit("wrote ", 1)[0]
    assert mixed.startswith(table_a)
    lm_out = mixed[len(table_a):]
    words = " ".join(lm_out.split())  # titles of narrow tables fold
    assert "PI vs κ, language models: PI: relative test CE reduction (%)" in words
    header = [line for line in lm_out.splitlines() if "┃" in line]  # two lines: 'bpb', 'arm/labels'
    for col in ("PI (rel. CE reduction %)", "ppl red. %", "Δtop-1 (pts)", "OOD PI %", "teacher CE"):
        assert col in header[0] or col in header[1], col
    assert "bpb" in header[0] and header[1].count("arm/labels") == 4  # CE, bpb, agree, KL
    assert "mean ± half-width of the 95% t-interval over paired seeds" in words
    assert "Language models — PI by τ × κ (rel. CE reduction %, α = 1)" in words
    assert "Language models — Label-smoothing control: PI (rel. CE reduction %) per arm" in words
    assert "PI vs κ — " not in lm_out and "labels acc" in table_a and "labels acc" not in lm_out


def test_cli_table_of_a_classification_tree_keeps_its_header(tmp_path, monkeypatch):
    _cls_tree(tmp_path / "runs")
    out = _cli_report(tmp_path / "runs", tmp_path / "rep", monkeypatch)
    header = next(line for line in out.splitlines() if "arm" in line and "PI" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "arm", "model", "κ", "n", "pairs", "arm acc", "labels acc", "PI", "95% CI (t)", "teacher acc",
        "agree arm/labels", "KL arm/labels"]
    assert "language models" not in out.lower() and "ppl" not in out


def test_plots_label_lm_pi_and_never_mix_kinds(tmp_path):
    from kdcli.report import plots

    lm_tree(tmp_path / "lm")
    _cls_tree(tmp_path / "cls")
    lm_rows = report.run(report.ReportConfig(root=str(tmp_path / "lm"))).rows
    cls_rows = report.run(report.ReportConfig(root=str(tmp_path / "cls"))).rows
    assert plots.pi_label(lm_rows[0]) == "PI: relative test CE reduction (%)"
    assert plots.pi_label(cls_rows[0]) == "PI = acc(arm) − acc(labels) (points)"
    for plot in (plots.pi_vs_kappa, plots.accuracy_vs_kappa):
        with pytest.raises(ValueError, match="different tasks"):
            plot(cls_rows + lm_rows, tmp_path / "mixed.png")
    assert not (tmp_path / "mixed.png").exists()


def test_students_of_one_name_but_other_sizes_never_share_a_row(tmp_path):
    for channels, acc in ((32, 0.5), (8, 0.3)):
        for seed in (0, 1):
            write_run(tmp_path, f"c{channels}/kd{seed}", stage="distill", acc=acc + 0.1, tau=4.0, seed=seed,
                      channels=channels)
            write_run(tmp_path, f"c{channels}/lab{seed}", stage="train-labels", acc=acc, seed=seed,
                      channels=channels)
    rows = report.run(report.ReportConfig(root=str(tmp_path), plots=False)).rows
    assert sorted(r["model"] for r in rows) == ["cnn1d channels=32", "cnn1d channels=8"]
    assert all(r["pairs"] == 2 and r["pi"] == pytest.approx(10.0) for r in rows)


def test_curves_of_several_teachers_are_apart():
    """Rows of one arm and model but two teachers (teacher_quality.sh) are two curves, named
    by teacher; one teacher keeps the plain arm name."""
    from kdcli.report.plots import _lines

    rows = [{"arm": "kd τ=4 α=1", "model": "cnn1d", "teacher": t, "teacher_metric": m, "kappa": k}
            for t, m in (("aaaaaaaa1", 90.0), ("bbbbbbbb2", 60.0)) for k in (0.1, 1.0)]
    lines = _lines(rows)
    assert set(lines) == {"kd τ=4 α=1, teacher aaaaaa (90)", "kd τ=4 α=1, teacher bbbbbb (60)"}
    assert all([r["kappa"] for r in line] == [0.1, 1.0] for line in lines.values())
    assert set(_lines(rows[:2])) == {"kd τ=4 α=1"}
