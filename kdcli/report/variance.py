"""Bias and variance across seeds, from the runs' test predictions (kdcli.io.predictions).

For one arm at one κ, the S seeds' predictions p_s on the same test rows (float64, each
renormalised) decompose the expected test loss exactly, row by row, then averaged over rows:

Cross-entropy (Heskes 1998, "Bias/variance decompositions for likelihood-based estimators",
Neural Computation 10(6)): with p̄ the normalised geometric mean of the p_s,
    E_s[−log p_s(y)] = −log p̄(y)  +  E_s KL(p̄ ‖ p_s)
                       (bias term)     (variance term)
The bias term holds the irreducible noise too: the test label is the only truth there is. With
q = mean_s log p_s and Z = Σ_c exp q_c, the variance term is −log Z and the bias term −(q_y − log Z).

0-1 loss (Domingos 2000, "A unified bias-variance decomposition", ICML): with ŷ_s the seeds'
top-1 predictions and y_m their mode (ties go to the lowest class index), bias B = 1[y_m ≠ y],
variance V = P_s(ŷ_s ≠ y_m), and the error is B + V where B = 0 and 1 − c·V where B = 1,
c = P_s(ŷ_s = y | ŷ_s ≠ y_m): net variance (error − bias) = unbiased variance − c·biased variance.

Disagreement: the fraction of seed pairs (s < s') whose top-1 predictions differ.

With S seeds the variance terms are estimated from S draws; they grow towards their limit with
S (for the cross-entropy roughly as (S − 1)/S), so arms are compared at equal S (paired seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TERMS = ("ce", "ce_bias", "ce_variance", "err", "err_bias", "err_variance", "err_net_variance",
         "disagreement")
CHUNK_ELEMENTS = 1 << 22  # float64 temporaries of S × rows × V stay near 32 MB


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def decompose(log_probs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row terms (TERMS, each [R], float64) of S seeds' predictions `log_probs` [S, R, V]
    (any float dtype; renormalised here) on rows with true classes `targets` [R].
    ce = ce_bias + ce_variance and err = err_bias + err_net_variance, row by row."""
    s, r, v = log_probs.shape
    if s < 2:
        raise ValueError("the decomposition needs at least two seeds")
    out = {name: np.empty(r) for name in TERMS}
    step = max(1, CHUNK_ELEMENTS // (s * v))
    for i in range(0, r, step):
        lp = _log_softmax(log_probs[:, i:i + step].astype(np.float64))  # [S, r, V]
        y = targets[i:i + step]
        at = np.arange(len(y))
        q = lp.mean(axis=0)  # [r, V]: log of the unnormalised geometric mean
        qmax = q.max(axis=-1)
        log_z = qmax + np.log(np.exp(q - qmax[:, None]).sum(axis=-1))
        out["ce"][i:i + step] = -q[at, y]
        out["ce_bias"][i:i + step] = -(q[at, y] - log_z)
        out["ce_variance"][i:i + step] = np.maximum(-log_z, 0.0)  # ≥ 0 (AM–GM); rounding can dip below
        top = lp.argmax(axis=-1)  # [S, r]
        counts = np.zeros((len(y), v), dtype=np.int64)
        for row_top in top:
            counts[at, row_top] += 1
        main = counts.argmax(axis=-1)  # the mode; ties go to the lowest class index
        wrong = (top != y).mean(axis=0)
        off_main = s - counts[at, main]  # seeds not predicting the main prediction
        out["err"][i:i + step] = wrong
        out["err_bias"][i:i + step] = (main != y).astype(np.float64)
        out["err_variance"][i:i + step] = off_main / s
        out["err_net_variance"][i:i + step] = wrong - (main != y)
        agreeing_pairs = (counts * (counts - 1) / 2).sum(axis=-1)
        out["disagreement"][i:i + step] = 1 - agreeing_pairs / (s * (s - 1) / 2)
    return out


def row_bootstrap(diff: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lower, upper): the 2.5% and 97.5% percentiles of the mean of per-row differences
    over test rows resampled with replacement (seeded); the seeds' runs stay fixed."""
    n = len(diff)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for b in range(resamples):
        means[b] = diff[rng.integers(0, n, n)].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


# ---- report rows: one per PI row (arm, model, teacher, setting, κ), both arms of its pairs ----

BEFORE_PREDICTIONS = "made before kdcli kept test predictions"
DELTAS = ("ce_bias", "ce_variance", "err_bias", "err_net_variance")  # arm − labels, with a row-bootstrap CI


def _load(run: dict) -> tuple[object | None, str]:
    """(predictions, '') of a student run, or (None, why not)."""
    from kdcli.errors import ArtifactError
    from kdcli.io.predictions import read_predictions
    from kdcli.io.runs import PREDICTIONS_FILE

    if PREDICTIONS_FILE not in run.get("artifacts", {}):
        return None, f"{run['dir']}: {BEFORE_PREDICTIONS}"
    try:
        p = read_predictions(Path(run["dir"]) / PREDICTIONS_FILE)
    except ArtifactError as exc:
        return None, str(exc)
    if p.meta.get("run_id") != run["run_id"]:
        return None, f"{run['dir']}/{PREDICTIONS_FILE}: made by run {p.meta.get('run_id')}, not this run.json's"
    if not np.isfinite(p.log_probs).all():
        return None, f"{run['dir']}/{PREDICTIONS_FILE}: holds NaN predictions (the run diverged)"
    return p, ""


def _stack(runs: list[dict]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, str]:
    """(log_probs [S, R, V], targets, rows, '') of runs predicting the same test rows, or
    (None, None, None, why not)."""
    loaded = []
    for run in runs:
        p, why = _load(run)
        if p is None:
            return None, None, None, why
        loaded.append(p)
    first = loaded[0]
    for run, p in zip(runs[1:], loaded[1:]):
        if not (np.array_equal(p.rows, first.rows) and np.array_equal(p.targets, first.targets)
                and p.log_probs.shape == first.log_probs.shape):
            return None, None, None, (f"{run['dir']}: predictions on other test rows than {runs[0]['dir']} "
                                      "(another test split or sample)")
    return np.stack([p.log_probs for p in loaded]), first.targets, first.rows, ""


def variance_rows(groups, group_by: tuple[str, ...], resamples: int = 1000) -> tuple[list[dict], list[str]]:
    """Bias-variance rows from kdcli.report.pi.group_pairs' groups (groups of one seed are left
    out), and why any other group has none. Terms are row means (0-1 terms and disagreement in
    %, cross-entropy terms in nats); `d_<term>` is arm − labels with its 95% bootstrap interval
    over test rows (`_lo`, `_hi`)."""
    rows, skipped = [], []
    cache: dict[tuple, tuple] = {}
    for key, members in groups:
        if len(members) < 2:
            continue
        arm, model, teacher = key[:3]
        sides = {}
        for side, runs in (("arm", [p.run for p in members]), ("labels", [p.labels for p in members])):
            ids = tuple(r["run_id"] for r in runs)
            if ids not in cache:
                lp, targets, at, why = _stack(runs)
                cache[ids] = (None, why) if lp is None else ((decompose(lp, targets), targets, at), "")
            sides[side], why = cache[ids]
            if sides[side] is None:
                skipped.append(f"{arm}, {model}, κ={key[-2]:g}: {why}")
                break
        else:
            (a, _, a_rows), (b, _, b_rows) = sides["arm"], sides["labels"]
            if not np.array_equal(a_rows, b_rows):
                skipped.append(f"{arm}, {model}, κ={key[-2]:g}: the arm and its label twins predicted other "
                               "test rows")
                continue
            scale = {t: 100.0 if t.startswith("err") or t == "disagreement" else 1.0 for t in TERMS}
            row = {"arm": arm, "model": model, "teacher": teacher, **dict(zip(group_by, key[3:-2])),
                   "kappa": key[-2], "n_seeds": len(members), "rows": len(a_rows)}
            for side, terms in (("arm", a), ("labels", b)):
                row.update({f"{side}_{t}": scale[t] * float(terms[t].mean()) for t in TERMS})
            for t in DELTAS:
                mean, lo, hi = row_bootstrap(scale[t] * (a[t] - b[t]), resamples)
                row.update({f"d_{t}": mean, f"d_{t}_lo": lo, f"d_{t}_hi": hi})
            rows.append(row)
    return rows, skipped
