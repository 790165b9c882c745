"""Neural collapse against κ: the `collapse` files' measures (kdcli/metrics/collapse.py) of
each arm's students and their label twins, paired by seed.

One row per report row (kdcli.report.pi.group_pairs: arm, model, teacher, setting, κ) and
split: each NC measure's mean over the pairs for the arm and for the labels twins, and the
paired difference arm − labels with its 95% t-interval over pairs (those with both values: a
measure is NaN for dead features); the teacher's own value when a file measured it on that
split. A pair counts for a split when both of its runs were measured there with the same
sample draw (--max-samples, --seed; the files may come from several `collapse` commands, read
in path order, a later measurement of a run replacing an earlier one).
"""

from __future__ import annotations

import math

from kdcli.metrics.collapse import METRICS
from kdcli.report.stats import mean_ci, nanmean


def collapse_rows(files: list[tuple[list[dict], dict]], groups, group_by: tuple[str, ...]) -> list[dict]:
    """`files`: (rows, metadata) of collapse files; `groups`: kdcli.report.pi.group_pairs output."""
    measured: dict[tuple[str, str], dict] = {}  # (run_id, split) -> row, with its file's sample draw
    for rows, meta in files:
        draw = (meta.get("max_samples"), meta.get("seed"))
        for r in rows:
            measured[(r["run_id"], r["split"])] = {**r, "_draw": draw}
    splits = list(dict.fromkeys(s for _, s in measured))
    out = []
    for key, members in groups:
        arm, model, teacher = key[:3]
        for split in splits:
            both = [(measured[(p.run["run_id"], split)], measured[(p.labels["run_id"], split)]) for p in members
                    if (p.run["run_id"], split) in measured and (p.labels["run_id"], split) in measured]
            both = [(a, b) for a, b in both if a["_draw"] == b["_draw"]]  # the same samples, or not a pair
            if not both:
                continue
            row = {"arm": arm, "model": model, "teacher": teacher, **dict(zip(group_by, key[3:-2])),
                   "kappa": key[-2], "split": split, "pairs": len(both)}
            own = measured.get((teacher, split))
            for m in METRICS:
                a = [x[m] for x, _ in both]
                b = [y[m] for _, y in both]
                diffs = [x - y for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
                d, lo, hi = mean_ci(diffs) if diffs else (math.nan, math.nan, math.nan)
                row.update({f"arm_{m}": nanmean(a), f"labels_{m}": nanmean(b), f"delta_{m}": d,
                            f"delta_{m}_lo": lo, f"delta_{m}_hi": hi,
                            f"teacher_{m}": own[m] if own is not None else math.nan})
            out.append(row)
    return out
