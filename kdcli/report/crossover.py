"""The crossover κ*: the data fraction at which an arm's PI falls to zero, with a bootstrap
interval over paired seeds.

Along the sorted κ grid, κ* is where the mean PI first goes from above zero to zero or below,
interpolated linearly in log κ between the two bracketing grid points. PI at or below zero at
the smallest κ: "below the grid"; PI above zero at every κ: "not reached" (κ* lies above the
grid, if anywhere). A κ whose mean PI is NaN is left out of the grid.

The interval resamples seeds with replacement (the same seeds at every κ, since a seed's pairs
at different κ share the seed), recomputes the mean PI per κ and κ*, and takes the 2.5% and
97.5% points of the resampled κ* in order, where "below the grid" sorts below every κ and "not
reached" above: a bound that lands there is reported as that, not as a number.
"""

from __future__ import annotations

import math

import numpy as np

from kdcli.report.stats import nanmean

BELOW, CROSSED, NOT_REACHED = "below the grid", "crossed", "not reached"


def crossing(kappas: list[float], pis: list[float]) -> tuple[str, float]:
    """(status, log κ*) of mean PIs `pis` on grid `kappas` (any order): log κ* is −inf below
    the grid and +inf when not reached."""
    grid = sorted((k, p) for k, p in zip(kappas, pis) if not math.isnan(p))
    if not grid:
        raise ValueError("no PI on the grid")
    if grid[0][1] <= 0:
        return BELOW, -math.inf
    for (k0, p0), (k1, p1) in zip(grid, grid[1:]):
        if p1 <= 0:  # p0 > 0 here: the first fall to zero
            x0, x1 = math.log(k0), math.log(k1)
            return CROSSED, x0 + (x1 - x0) * p0 / (p0 - p1)
    return NOT_REACHED, math.inf


def kappa_star(pi_by_kappa: dict[float, dict], resamples: int = 2000, seed: int = 0) -> dict | None:
    """κ* of one arm from its pairs' PI, `pi_by_kappa[κ][seed] = PI`: the point estimate from
    every pair; the interval from the seeds present at every κ (needs two), so with uneven seeds
    the point may lie outside it. A NaN PI (a run without its metric) is left out; None when
    fewer than two κ keep a PI."""
    pi_by_kappa = {k: {s: v for s, v in by_seed.items() if math.isfinite(v)} for k, by_seed in pi_by_kappa.items()}
    pi_by_kappa = {k: by_seed for k, by_seed in pi_by_kappa.items() if by_seed}
    if len(pi_by_kappa) < 2:
        return None
    kappas = sorted(pi_by_kappa)
    status, x = crossing(kappas, [nanmean(list(pi_by_kappa[k].values())) for k in kappas])
    common = sorted(set.intersection(*(set(pi_by_kappa[k]) for k in kappas)), key=str)
    out = {"kappa_star": math.exp(x) if status == CROSSED else None, "status": status,
           "kappa_star_lo": None, "lo_status": None, "kappa_star_hi": None, "hi_status": None,
           "n_seeds": len(common), "resamples": 0, "share_below": None, "share_not_reached": None}
    if len(common) < 2:
        return out
    table = np.array([[pi_by_kappa[k][s] for s in common] for k in kappas])  # [κ, seed]
    pick = np.random.default_rng(seed).integers(0, len(common), size=(resamples, len(common)))
    means = table[:, pick].mean(axis=2)  # [κ, resample]
    draws = sorted((crossing(kappas, means[:, b].tolist()) for b in range(resamples)), key=lambda d: d[1])
    lo = draws[math.floor(0.025 * (resamples - 1))]
    hi = draws[math.ceil(0.975 * (resamples - 1))]
    out.update(kappa_star_lo=math.exp(lo[1]) if lo[0] == CROSSED else None, lo_status=lo[0],
               kappa_star_hi=math.exp(hi[1]) if hi[0] == CROSSED else None, hi_status=hi[0],
               resamples=resamples, share_below=sum(d[0] == BELOW for d in draws) / resamples,
               share_not_reached=sum(d[0] == NOT_REACHED for d in draws) / resamples)
    return out


def describe(row: dict) -> str:
    """κ* and its interval as a table cell: '0.31 [0.12, not reached]'."""
    def one(value, status):
        return f"{value:.3g}" if status == CROSSED else status
    point = one(row["kappa_star"], row["status"])
    if row["lo_status"] is None:
        return point
    return f"{point} [{one(row['kappa_star_lo'], row['lo_status'])}, {one(row['kappa_star_hi'], row['hi_status'])}]"


def kappa_star_rows(groups, group_by: tuple[str, ...], resamples: int = 2000) -> list[dict]:
    """κ* per arm (model, teacher, setting): one row per kdcli.report.pi.group_pairs panel
    that has at least two κ; PI per pair from kdcli.report.pi.pair_pi, seeds from the runs."""
    from kdcli.report.pi import pair_pi

    panels: dict[tuple, dict[float, dict]] = {}
    for key, members in groups:
        panel = panels.setdefault((*key[:-2], key[-1]), {})
        panel[key[-2]] = {(p.run["config"]["seed"], p.run["config"].get("subset_seed")): pair_pi(p)
                          for p in members}
    rows = []
    for key, by_kappa in panels.items():
        star = kappa_star(by_kappa, resamples)
        if star is None:  # fewer than two κ with a PI
            continue
        arm, model, teacher = key[:3]
        rows.append({"arm": arm, "model": model, "teacher": teacher, **dict(zip(group_by, key[3:-1])),
                     "kappas": " ".join(f"{k:g}" for k in sorted(by_kappa)),
                     "pairs": sum(len(v) for v in by_kappa.values()), **star})
    return rows
