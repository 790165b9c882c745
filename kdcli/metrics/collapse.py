"""Neural collapse (Papyan, Han & Donoho 2020) of penultimate features, in float64.

For features h_i ∈ R^d with labels y_i over the C classes present, class means μ_c, the
class-balanced global mean μ_G = mean_c μ_c and centred means m_c = μ_c − μ_G (columns of
M, d×C):

- NC1 = tr(Σ_W Σ_B⁺) / C, with Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ and
  Σ_B = (1/C) Σ_c m_c m_cᵀ (rank ≤ C − 1; its pseudo-inverse keeps eigenvalues above
  PINV_RCOND of the largest): within-class spread relative to between-class.
- NC2: equinorm = std_c ‖m_c‖ / mean_c ‖m_c‖; equiangularity = mean over c ≠ c' of
  |cos(m_c, m_c') + 1/(C − 1)|; and the distance of the normalised Gram matrix to the simplex
  ETF's, ‖MᵀM/‖MᵀM‖_F − (I − 11ᵀ/C)/√(C − 1)‖_F. All three are 0 for a simplex ETF.
- NC3 (self-duality) = ‖W/‖W‖_F − Mᵀ/‖M‖_F‖²_F, W the last layer's weights (C×d).
- NC4 = the fraction of samples where the nearest class mean (Euclidean) and the network's
  prediction disagree (0: the network acts as the nearest-class-centre rule).

Every NC measure is 0 at perfect collapse. Classes absent from the samples are left out
(their rows of W too); `classes` says how many were present. When every class mean is the
same (dead features) NC1–NC3 are NaN, not 0: there is no between-class geometry to measure.
"""

from __future__ import annotations

import numpy as np

PINV_RCOND = 1e-10
METRICS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_etf", "nc3", "nc4")


def class_means(h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(present classes [C'], their means [C', d]) in class order."""
    classes = np.unique(y)
    sums = np.zeros((classes.size, h.shape[1]))
    np.add.at(sums, np.searchsorted(classes, y), h)
    return classes, sums / np.bincount(np.searchsorted(classes, y))[:, None]


def collapse(h, y, weight, pred) -> dict:
    """The NC measures of features h [N, d] with labels y [N], last-layer weights [num_classes, d]
    and the network's predictions pred [N]; plus n, classes (present) and d."""
    h = np.asarray(h, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    classes, mu = class_means(h, y)
    if classes.size < 2:
        raise ValueError("neural collapse needs samples of at least two classes")
    c = classes.size
    m = mu - mu.mean(axis=0)  # centred class means, one per row: Mᵀ [C, d]

    within = h - mu[np.searchsorted(classes, y)]
    sigma_w = within.T @ within / len(h)
    sigma_b = m.T @ m / c
    nearest = _nearest(h, classes, mu)
    nc4 = float((nearest != pred).mean())
    if not np.linalg.norm(m) > 0:  # every class mean the same (dead features): no geometry to measure
        nan = float("nan")
        return {"nc1": nan, "nc2_equinorm": nan, "nc2_equiangular": nan, "nc2_etf": nan, "nc3": nan, "nc4": nc4,
                "n": int(len(h)), "classes": int(c), "d": int(h.shape[1])}
    nc1 = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=PINV_RCOND, hermitian=True)) / c)

    norms = np.linalg.norm(m, axis=1)
    off = ~np.eye(c, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):  # a class mean at μ_G: its angles are NaN
        cos = (m @ m.T) / np.outer(norms, norms)
    gram = m @ m.T
    etf = (np.eye(c) - 1.0 / c) / np.sqrt(c - 1)

    w = np.asarray(weight, dtype=np.float64)[classes]
    dual = w / np.linalg.norm(w) - m / np.linalg.norm(m)
    return {
        "nc1": nc1,
        "nc2_equinorm": float(norms.std() / norms.mean()),
        "nc2_equiangular": float(np.abs(cos[off] + 1.0 / (c - 1)).mean()),
        "nc2_etf": float(np.linalg.norm(gram / np.linalg.norm(gram) - etf)),
        "nc3": float((dual ** 2).sum()),
        "nc4": nc4,
        "n": int(len(h)), "classes": int(c), "d": int(h.shape[1]),
    }


def _nearest(h: np.ndarray, classes: np.ndarray, mu: np.ndarray, rows: int = 4096) -> np.ndarray:
    """The nearest class mean of each row: argmin_c ‖h − μ_c‖² = argmin_c (‖μ_c‖² − 2 h·μ_c), a
    block of rows at a time ([rows, C] in memory, whatever the feature size)."""
    out = np.empty(len(h), dtype=np.int64)
    sq = (mu ** 2).sum(axis=1)
    for start in range(0, len(h), rows):
        out[start:start + rows] = classes[np.argmin(sq[None, :] - 2.0 * h[start:start + rows] @ mu.T, axis=1)]
    return out
