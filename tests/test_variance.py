"""Bias-variance decomposition across seeds and the crossover κ*: against float64 references
written here, and through `report` on synthetic run trees with predictions files."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kdcli.errors import ArtifactError
from kdcli.io.predictions import read_predictions
from kdcli.report.crossover import BELOW, CROSSED, NOT_REACHED, crossing, describe, kappa_star
from kdcli.report.variance import decompose, row_bootstrap
from kdcli.stages import report
from tests.test_report import write_run


def reference_terms(logits: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row terms by the textbook formulas, one row and one seed at a time (float64)."""
    s, r, v = logits.shape
    out = {k: np.zeros(r) for k in ("ce", "ce_bias", "ce_variance", "err", "err_bias", "err_variance",
                                    "err_net_variance", "disagreement")}
    for i in range(r):
        p = [np.exp(logits[j, i]) / np.exp(logits[j, i]).sum() for j in range(s)]
        geo = np.exp(sum(np.log(pj) for pj in p) / s)
        pbar = geo / geo.sum()
        out["ce"][i] = np.mean([-math.log(pj[y[i]]) for pj in p])
        out["ce_bias"][i] = -math.log(pbar[y[i]])
        out["ce_variance"][i] = np.mean([sum(pbar[c] * math.log(pbar[c] / pj[c]) for c in range(v)) for pj in p])
        preds = [int(np.argmax(pj)) for pj in p]
        counts = [preds.count(c) for c in range(v)]
        main = counts.index(max(counts))  # lowest class among the most frequent
        out["err"][i] = np.mean([pr != y[i] for pr in preds])
        out["err_bias"][i] = float(main != y[i])
        out["err_variance"][i] = np.mean([pr != main for pr in preds])
        if main == y[i]:
            net = out["err_variance"][i]
        else:
            off = [pr for pr in preds if pr != main]
            c = np.mean([pr == y[i] for pr in off]) if off else 0.0
            net = -c * out["err_variance"][i]
        out["err_net_variance"][i] = net
        pairs = list(itertools.combinations(preds, 2))
        out["disagreement"][i] = np.mean([a != b for a, b in pairs])
    return out


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_decomposition_matches_the_textbook_formulas_and_adds_up(seeds):
    rng = np.random.default_rng(seeds)
    logits = rng.normal(0, 2, size=(seeds, 300, 4))
    logits[:, :40] = logits[:1, :40]  # rows where every seed agrees: variance 0
    y = rng.integers(0, 4, 300)
    got = decompose(logits, y)
    want = reference_terms(logits, y)
    for name, ref in want.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(got["ce_bias"] + got["ce_variance"], got["ce"], rtol=1e-12)
    np.testing.assert_allclose(got["err_bias"] + got["err_net_variance"], got["err"], atol=1e-12)
    assert (got["ce_variance"][:40] < 1e-12).all() and (got["disagreement"][:40] == 0).all()
    assert (got["ce_variance"] >= 0).all()


def test_decomposition_of_log_probabilities_in_chunks_equals_one_pass(monkeypatch):
    import kdcli.report.variance as V

    rng = np.random.default_rng(0)
    lp = rng.normal(0, 3, size=(3, 257, 11))
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    y = rng.integers(0, 11, 257)
    whole = decompose(lp.astype(np.float16), y)
    monkeypatch.setattr(V, "CHUNK_ELEMENTS", 3 * 11 * 10)  # 10 rows at a time
    chunked = decompose(lp.astype(np.float16), y)
    for name in whole:
        np.testing.assert_array_equal(whole[name], chunked[name])
    # float16 storage: the terms of the renormalised float16 predictions, not of the float64 ones
    ref = reference_terms(lp.astype(np.float16).astype(np.float64), y)
    np.testing.assert_allclose(whole["ce"], ref["ce"], rtol=1e-9)


def test_domingos_terms_on_a_hand_made_row():
    # three seeds predict class 1, 1, 2 on a row whose label is 2: main prediction 1 (biased),
    # variance 1/3, and one of the off-main predictions is right: net variance −1·(1/3)
    eye = np.eye(3) * 10
    logits = np.stack([eye[[1]], eye[[1]], eye[[2]]])
    t = decompose(logits, np.array([2]))
    assert t["err"][0] == pytest.approx(2 / 3)
    assert t["err_bias"][0] == 1 and t["err_variance"][0] == pytest.approx(1 / 3)
    assert t["err_net_variance"][0] == pytest.approx(-1 / 3)
    assert t["disagreement"][0] == pytest.approx(2 / 3)  # pairs (1,1) agree, (1,2) twice differ


def test_decomposition_needs_two_seeds():
    with pytest.raises(ValueError, match="two seeds"):
        decompose(np.zeros((1, 3, 2)), np.zeros(3, dtype=np.int64))


def test_row_bootstrap_brackets_the_mean_and_is_seeded():
    d = np.random.default_rng(1).normal(0.3, 1, 2000)
    mean, lo, hi = row_bootstrap(d, 500)
    assert mean == pytest.approx(d.mean()) and lo < mean < hi
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))  # the normal interval it should be near
    assert hi - lo == pytest.approx(2 * half, rel=0.2)
    assert row_bootstrap(d, 500) == (mean, lo, hi)
    assert row_bootstrap(np.full(50, 0.25), 100) == (0.25, 0.25, 0.25)


# ---- κ* ----

def test_crossing_interpolates_in_log_kappa():
    status, x = crossing([0.01, 0.1, 1.0], [4.0, 2.0, -2.0])
    assert status == CROSSED and math.exp(x) == pytest.approx(10 ** -0.5)  # halfway from 0.1 to 1 in log
    status, x = crossing([1.0, 0.1, 0.01], [-1.0, 3.0, 5.0])  # any order
    assert math.exp(x) == pytest.approx(10 ** (-1 + 0.75))
    assert math.exp(crossing([0.01, 0.1, 1.0], [3.0, 0.0, -1.0])[1]) == pytest.approx(0.1)  # zero on the grid
    assert crossing([0.01, 0.1, 1.0], [3.0, -1.0, 2.0])[0] == CROSSED  # the first fall counts
    assert math.exp(crossing([0.01, 0.1, 1.0], [3.0, -1.0, 2.0])[1]) == pytest.approx(10 ** (-2 + 0.75))
    assert crossing([0.01, 0.1], [1.0, 0.5]) == (NOT_REACHED, math.inf)
    assert crossing([0.01, 0.1], [0.0, 0.5]) == (BELOW, -math.inf)
    assert crossing([0.01, 0.1, 1.0], [2.0, math.nan, -2.0])[0] == CROSSED  # a NaN κ is left out
    assert math.exp(crossing([0.01, 0.1, 1.0], [2.0, math.nan, -2.0])[1]) == pytest.approx(0.1)


def test_kappa_star_interval_over_paired_seeds():
    # seed A crosses between 0.1 and 1 (at 10^-0.5); seed B never falls to zero; their mean
    # [2, 2, 0] reaches zero at κ = 1. Resamples: AA (1/4) → 0.316, AB (1/2) → 1, BB (1/4) → not reached.
    a, b = [2.0, 1.0, -1.0], [2.0, 3.0, 1.0]
    pi = {k: {"A": a[i], "B": b[i]} for i, k in enumerate([0.01, 0.1, 1.0])}
    got = kappa_star(pi, resamples=2000)
    assert got["status"] == CROSSED and got["kappa_star"] == pytest.approx(1.0)
    assert got["lo_status"] == CROSSED and got["kappa_star_lo"] == pytest.approx(10 ** -0.5)
    assert got["hi_status"] == NOT_REACHED and got["kappa_star_hi"] is None
    assert got["share_not_reached"] == pytest.approx(0.25, abs=0.04) and got["share_below"] == 0
    assert describe(got) == "1 [0.316, not reached]"
    assert kappa_star(pi, resamples=2000) == got  # seeded


def test_kappa_star_not_reached_below_the_grid_and_too_few_seeds():
    up = {k: {0: 3.0, 1: 2.0, 2: 4.0} for k in (0.01, 0.1, 1.0)}
    got = kappa_star(up, 500)
    assert (got["status"], got["lo_status"], got["hi_status"]) == (NOT_REACHED,) * 3
    assert got["kappa_star"] is None and got["share_not_reached"] == 1
    assert describe(got) == "not reached [not reached, not reached]"
    down = {k: {0: -1.0, 1: -2.0} for k in (0.01, 0.1)}
    assert kappa_star(down, 500)["status"] == BELOW and describe(kappa_star(down, 500)).startswith(BELOW)
    one = {0.01: {0: 2.0}, 1.0: {0: -2.0}}
    got = kappa_star(one)
    assert got["status"] == CROSSED and got["kappa_star"] == pytest.approx(0.1)
    assert got["lo_status"] is None and got["resamples"] == 0 and describe(got) == "0.1"
    # seeds missing at some κ: the interval uses the seeds present at every κ
    ragged = {0.01: {0: 2.0, 1: 3.0, 2: 1.0}, 1.0: {0: -2.0, 1: -1.0}}
    assert kappa_star(ragged)["n_seeds"] == 2


def test_kappa_star_leaves_nan_pi_out_and_needs_two_kappas():
    nan = math.nan
    assert kappa_star({0.1: {0: nan, 1: nan}, 0.5: {0: 2.0, 1: 1.0}}) is None  # one κ keeps a PI
    got = kappa_star({0.1: {0: nan, 1: 4.0, 2: 3.0}, 0.5: {0: 1.0, 1: -2.0, 2: -1.0}}, 500)
    assert got["n_seeds"] == 2 and got["status"] == CROSSED  # seed 0 is left out of the interval
    assert kappa_star({0.1: {0: nan}, 0.5: {0: 1.0}, 1.0: {0: -1.0}})["kappa_star"] == pytest.approx(0.5 ** 0.5)


def test_pi_plot_with_uneven_seeds_and_bounds_off_the_grid(tmp_path):
    from kdcli.report.plots import pi_vs_kappa

    rows = [{"arm": "kd", "model": "m", "kappa": k, "pi": p, "pi_lo": p - 1, "pi_hi": p + 1, "metric": "test_acc",
             "pi_method": "difference_points"} for k, p in ((0.1, 20.0), (1.0, -1.0))]
    # the point (all pairs) right of its interval (common seeds), and a lower bound "not reached"
    star = {"arm": "kd", "model": "m", "kappas": "0.1 1", "kappa_star": 0.9, "status": CROSSED,
            "kappa_star_lo": 0.2, "lo_status": CROSSED, "kappa_star_hi": 0.5, "hi_status": CROSSED}
    odd = {**star, "kappa_star_lo": None, "lo_status": NOT_REACHED, "kappa_star_hi": None, "hi_status": NOT_REACHED}
    for i, k in enumerate((star, odd)):
        assert pi_vs_kappa(rows, tmp_path / f"p{i}.png", [k]).is_file()


# ---- report on synthetic trees with predictions files ----

def write_predictions(run_dir: Path, run: dict, log_probs: np.ndarray, targets: np.ndarray,
                      rows: np.ndarray | None = None, run_id: str | None = None) -> None:
    """A predictions file written with safetensors directly (not kdcli's writer), recorded in run.json."""
    from safetensors.numpy import save_file

    path = run_dir / "predictions.safetensors"
    rows = np.arange(len(targets), dtype=np.int64) if rows is None else rows
    save_file({"log_probs": log_probs.astype(np.float16), "targets": targets.astype(np.int64), "rows": rows},
              str(path), metadata={"format": "kdcli-predictions", "format_version": "1",
                                   "run_id": run_id or run["run_id"],
                                   "model_args": "{}", "inputs": "{}"})
    run["artifacts"]["predictions.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
    run["artifact_bytes"] = {"predictions.safetensors": path.stat().st_size}
    (run_dir / "run.json").write_text(json.dumps(run))


def _tree(root: Path, seeds=(0, 1, 2), kappas=(0.1, 1.0), n=200, v=5):
    """Teacher, KD and label students; KD students' predictions vary less across seeds."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, v, n)
    base = rng.normal(0, 1, (n, v))
    write_run(root, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    preds = {}
    for kappa in kappas:
        for seed in seeds:
            for stage, spread in (("distill", 0.3), ("train-labels", 1.5)):
                name = f"{'kd' if stage == 'distill' else 'labels'}/k{kappa}/s{seed}"
                gain = (0.05 if kappa < 0.5 else -0.03) + 0.005 * seed  # PI +5.5 then −2.5 points, mean
                acc = 0.6 + (gain if stage == "distill" else 0.0) + 0.01 * seed
                run = write_run(root, name, stage=stage, acc=acc, kappa=kappa, seed=seed,
                                tau=4.0 if stage == "distill" else None)
                logits = base + rng.normal(0, spread, (n, v))
                lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
                write_predictions(root / name, run, lp, y)
                preds[name] = lp.astype(np.float16).astype(np.float64)
    return y, preds


def test_report_rows_equal_the_decomposition_of_the_files(tmp_path):
    y, preds = _tree(tmp_path)
    res = report.run(report.ReportConfig(root=str(tmp_path), out=str(tmp_path / "rep")))
    (part,) = res.kinds
    assert len(part.variance_rows) == 2
    for row in part.variance_rows:
        k = row["kappa"]
        for side, arm in (("arm", "kd"), ("labels", "labels")):
            ref = reference_terms(np.stack([preds[f"{arm}/k{k}/s{s}"] for s in (0, 1, 2)]), y)
            assert row[f"{side}_ce"] == pytest.approx(ref["ce"].mean(), rel=1e-9)
            assert row[f"{side}_ce_variance"] == pytest.approx(ref["ce_variance"].mean(), rel=1e-9)
            assert row[f"{side}_err_bias"] == pytest.approx(100 * ref["err_bias"].mean())
            assert row[f"{side}_disagreement"] == pytest.approx(100 * ref["disagreement"].mean())
            assert row[f"{side}_ce_bias"] + row[f"{side}_ce_variance"] == pytest.approx(row[f"{side}_ce"])
        assert row["d_ce_variance"] < 0 and row["d_ce_variance_hi"] < 0  # KD's seeds agree more here
        assert row["n_seeds"] == 3 and row["rows"] == 200
    (star,) = part.kappa_star_rows
    assert star["status"] == CROSSED  # mean PI +5.5 at κ = 0.1, −2.5 at κ = 1: 5.5/8 of the way in log κ
    assert star["kappa_star"] == pytest.approx(10 ** (-1 + 5.5 / 8))
    assert star["lo_status"] == star["hi_status"] == CROSSED
    out = tmp_path / "rep"
    for name in ("bias_variance.csv", "kappa_star.csv", "bias_variance_vs_kappa.png", "pi_vs_kappa.png"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "bias and variance across seeds: cross-entropy" in md and "crossover κ*" in md
    saved = json.loads((out / "report.json").read_text())
    assert len(saved["bias_variance"]) == 2 and saved["bias_variance_skipped"] == []


def test_runs_without_usable_predictions_are_named_not_counted(tmp_path):
    _tree(tmp_path, kappas=(0.1,))
    run_dir = tmp_path / "labels/k0.1/s1"
    run = json.loads((run_dir / "run.json").read_text())
    del run["artifacts"]["predictions.safetensors"]  # as a run made before predictions were kept
    (run_dir / "run.json").write_text(json.dumps(run))
    res = report.run(report.ReportConfig(root=str(tmp_path)))
    (part,) = res.kinds
    assert part.variance_rows == []
    assert part.variance_skipped == [f"kd τ=4 α=1, cnn1d, κ=0.1: {run_dir}: made before kdcli kept test predictions"]


def test_nan_predictions_are_named_not_decomposed(tmp_path):
    _tree(tmp_path, kappas=(0.1,))
    d = tmp_path / "kd/k0.1/s1"
    run = json.loads((d / "run.json").read_text())
    p = read_predictions(d / "predictions.safetensors")
    lp = p.log_probs.astype(np.float64)
    lp[3] = np.nan
    write_predictions(d, run, lp, p.targets)
    (part,) = report.run(report.ReportConfig(root=str(tmp_path))).kinds
    assert part.variance_rows == [] and "holds NaN predictions" in part.variance_skipped[0]


@pytest.mark.parametrize("change", ["rows", "run_id"])
def test_predictions_on_other_rows_or_from_another_run_are_refused(tmp_path, change):
    _tree(tmp_path, kappas=(0.1,))
    d = tmp_path / ("kd/k0.1/s2" if change == "rows" else "labels/k0.1/s0")
    run = json.loads((d / "run.json").read_text())
    p = read_predictions(d / "predictions.safetensors")
    if change == "rows":
        write_predictions(d, run, p.log_probs.astype(np.float64), p.targets, p.rows + 1)
    else:
        write_predictions(d, run, p.log_probs.astype(np.float64), p.targets, run_id="other")
    (part,) = report.run(report.ReportConfig(root=str(tmp_path))).kinds
    assert part.variance_rows == []
    (why,) = part.variance_skipped
    assert ("predictions on other test rows" if change == "rows" else "made by run other") in why


@pytest.mark.parametrize("damage", ["truncate", "format", "dtype", "targets"])
def test_read_predictions_refuses_damaged_files_with_one_line(tmp_path, damage):
    from safetensors.numpy import save_file

    path = tmp_path / "predictions.safetensors"
    meta = {"format": "kdcli-predictions", "format_version": "1", "run_id": "r"}
    tensors = {"log_probs": np.zeros((4, 3), np.float16), "targets": np.zeros(4, np.int64),
               "rows": np.arange(4, dtype=np.int64)}
    if damage == "format":
        meta["format"] = "kdcli-model"
    if damage == "dtype":
        tensors["log_probs"] = tensors["log_probs"].astype(np.float32)
    if damage == "targets":
        tensors["targets"][1] = 3
    save_file(tensors, str(path), metadata=meta)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ArtifactError) as err:
        read_predictions(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
