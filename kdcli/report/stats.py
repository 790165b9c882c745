"""Means, confidence intervals and correlations, without scipy."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then the Cornish–Fisher expansion (error < 1e-3)."""
    if df < 1:
        raise ValueError("df must be ≥ 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(0.975)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def nanmean(values: list[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is."""
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of the 95% t-interval; the bounds are NaN for fewer than 2 values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def bootstrap_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lower, upper): 2.5% and 97.5% percentiles of resampled means (seeded)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return mean, _percentile(means, 0.025), _percentile(means, 0.975)


def _percentile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation; NaN when either side is constant or has fewer than 3 points."""
    n = len(x)
    if n < 3:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan
