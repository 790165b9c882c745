"""Neural collapse: kdcli.metrics.collapse against an independent float64 reference, at a perfect
simplex ETF, on hand-computed closed forms, with absent classes, and under the invariances the
measures must have."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdcli.metrics.collapse import METRICS, collapse

RTOL = 1e-9


# ---------------------------------------------------------------------------- the reference
# Written from the definitions (Papyan, Han & Donoho 2020), per sample / per class with plain
# loops, float64 throughout; no code shared with kdcli.metrics.collapse. Σ_B⁺ goes through the
# SVD of the centred class-mean matrix M (d×C): Σ_B = M Mᵀ / C = U diag(s²/C) Uᵀ, so
# Σ_B⁺ = C · U diag(s⁻²) Uᵀ over the nonzero singular values.


def ref_means(h: np.ndarray, y) -> tuple[list[int], list[np.ndarray]]:
    """Present classes in increasing order and their means, one sample at a time."""
    classes = sorted({int(v) for v in y})
    means = []
    for c in classes:
        total, count = np.zeros(h.shape[1]), 0
        for i in range(len(h)):
            if int(y[i]) == c:
                total = total + h[i]
                count += 1
        means.append(total / count)
    return classes, means


def ref_nearest(h: np.ndarray, classes, means) -> list[int]:
    out = []
    for i in range(len(h)):
        best, best_d = None, math.inf
        for c, mu in zip(classes, means):
            dist = float(sum((h[i, k] - mu[k]) ** 2 for k in range(h.shape[1])))
            if dist < best_d:
                best, best_d = c, dist
        out.append(best)
    return out


def reference(h, y, weight, pred) -> dict:
    h = np.asarray(h, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    n, d = h.shape
    classes, means = ref_means(h, y)
    c = len(classes)
    global_mean = sum(means) / c  # class-balanced: the mean of the class means
    m = np.column_stack([mu - global_mean for mu in means])  # d×C, column c = m_c

    # NC1: Σ_W as an explicit sum of outer products; Σ_B⁺ from the SVD of M.
    index = {cls: j for j, cls in enumerate(classes)}
    sigma_w = np.zeros((d, d))
    for i in range(n):
        v = h[i] - means[index[int(y[i])]]
        sigma_w += np.outer(v, v)
    sigma_w /= n
    u, s, _ = np.linalg.svd(m, full_matrices=False)
    keep = s > 1e-8 * s[0]
    sigma_b_pinv = np.zeros((d, d))
    for k in np.flatnonzero(keep):
        sigma_b_pinv += c * np.outer(u[:, k], u[:, k]) / s[k] ** 2
    nc1 = float(sum((sigma_w @ sigma_b_pinv)[k, k] for k in range(d))) / c

    # NC2.
    norms = [math.sqrt(float(m[:, j] @ m[:, j])) for j in range(c)]
    mean_norm = sum(norms) / c
    std_norm = math.sqrt(sum((x - mean_norm) ** 2 for x in norms) / c)  # population std
    total, pairs = 0.0, 0
    for a in range(c):
        for b in range(c):
            if a != b:
                cos = float(m[:, a] @ m[:, b]) / (norms[a] * norms[b])
                total += abs(cos + 1.0 / (c - 1))
                pairs += 1
    gram = np.array([[float(m[:, a] @ m[:, b]) for b in range(c)] for a in range(c)])
    gram_n = gram / math.sqrt(float((gram ** 2).sum()))
    target = np.array([[((1.0 if a == b else 0.0) - 1.0 / c) / math.sqrt(c - 1) for b in range(c)]
                       for a in range(c)])
    etf = math.sqrt(float(((gram_n - target) ** 2).sum()))

    # NC3 on the present classes' rows of W.
    w = np.stack([weight[cls] for cls in classes])  # C×d
    w_n = w / math.sqrt(float((w ** 2).sum()))
    mt_n = m.T / math.sqrt(float((m ** 2).sum()))
    nc3 = float(((w_n - mt_n) ** 2).sum())

    # NC4.
    nearest = ref_nearest(h, classes, means)
    nc4 = sum(1 for i in range(n) if nearest[i] != int(pred[i])) / n

    return {"nc1": nc1, "nc2_equinorm": std_norm / mean_norm, "nc2_equiangular": total / pairs,
            "nc2_etf": etf, "nc3": nc3, "nc4": nc4, "n": n, "classes": c, "d": d}


def assert_matches(got: dict, want: dict, rtol: float = RTOL, atol: float = 1e-12) -> None:
    for key in METRICS:
        assert got[key] == pytest.approx(want[key], rel=rtol, abs=atol), key
    for key in ("n", "classes", "d"):
        assert got[key] == want[key], key


# ---------------------------------------------------------------------------- data


def random_rotation(rng, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_problem(rng, c: int, d: int, counts=None, dtype=np.float64):
    """Imbalanced, shuffled samples of c classes around random means, with class-dependent
    spread, random W and predictions that mostly (not always) follow the labels."""
    if counts is None:
        counts = rng.integers(1, 40, size=c)
        counts[rng.integers(c)] = 1  # a class of one sample (no within-class spread)
    y = np.repeat(np.arange(c), counts)
    rng.shuffle(y)
    centres = 3.0 * rng.standard_normal((c, d)) + rng.standard_normal(d)
    spread = rng.uniform(0.3, 2.0, size=c)
    h = (centres[y] + spread[y, None] * rng.standard_normal((len(y), d))).astype(dtype)
    weight = rng.standard_normal((c, d))
    pred = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, c, size=len(y)))
    return h, y, weight, pred


def simplex_etf(rng, c: int, d: int, scale: float) -> np.ndarray:
    """Centred means of a simplex ETF, randomly rotated into d > c dims: [c, d], norms `scale`."""
    etf = math.sqrt(c / (c - 1)) * (np.eye(c) - np.full((c, c), 1.0 / c))  # unit-norm columns
    basis = random_rotation(rng, d)[:, :c]  # orthonormal d×c
    return scale * (basis @ etf).T


# ---------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("c,d", [(3, 1), (3, 8), (5, 2), (5, 20), (10, 4), (10, 9), (10, 32)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_features(c, d, seed):
    """Imbalanced counts, d below and above C − 1, float32 input on odd seeds."""
    rng = np.random.default_rng(1000 * seed + 10 * c + d)
    dtype = np.float32 if seed % 2 else np.float64
    h, y, weight, pred = random_problem(rng, c, d, dtype=dtype)
    got = collapse(h, y, weight, pred)
    want = reference(h, y, weight, pred)
    assert_matches(got, want)
    assert 0.0 < want["nc4"] < 1.0 and want["nc1"] > 0.0
    assert all(isinstance(got[k], float) for k in METRICS)


def test_matches_reference_across_row_blocks():
    """More samples than one block of the nearest-mean search (4096 rows)."""
    rng = np.random.default_rng(7)
    h, y, weight, pred = random_problem(rng, 3, 3, counts=np.array([2500, 1700, 400]))
    assert_matches(collapse(h, y, weight, pred), reference(h, y, weight, pred))


def test_class_balanced_global_mean():
    """The global mean is the mean of the class means, not of the samples: repeating one class's
    samples leaves every measure but NC4 (and n) unchanged."""
    rng = np.random.default_rng(3)
    h, y, weight, pred = random_problem(rng, 4, 6)
    extra = np.flatnonzero(y == 2)
    h2, y2 = np.concatenate([h, h[extra], h[extra]]), np.concatenate([y, y[extra], y[extra]])
    pred2 = np.concatenate([pred, pred[extra], pred[extra]])
    a, b = collapse(h, y, weight, pred), collapse(h2, y2, weight, pred2)
    for key in ("nc2_equinorm", "nc2_equiangular", "nc2_etf", "nc3"):
        assert b[key] == pytest.approx(a[key], rel=RTOL), key
    assert_matches(b, reference(h2, y2, weight, pred2))


# ---------------------------------------------------------------------------- simplex ETF


@pytest.mark.parametrize("c", [3, 5, 10])
def test_perfect_simplex_etf_is_all_zero(c):
    rng = np.random.default_rng(c)
    d = c + 4
    m = simplex_etf(rng, c, d, scale=rng.uniform(0.5, 5.0))
    mu = m + rng.standard_normal(d)  # any global offset
    y = np.repeat(np.arange(c), rng.integers(1, 20, size=c))  # imbalanced
    rng.shuffle(y)
    h = mu[y]
    weight = 0.37 * m  # W ∝ the centred means
    got = collapse(h, y, weight, y)
    want = reference(h, y, weight, y)
    for key in METRICS:
        assert got[key] == pytest.approx(0.0, abs=1e-12), key
        assert want[key] == pytest.approx(0.0, abs=1e-12), key  # the reference agrees
    assert got["classes"] == c and got["n"] == len(y) and got["d"] == d


@pytest.mark.parametrize("c", [3, 5, 10])
def test_simplex_etf_plus_noise(c):
    """NC1 > 0, equal to the reference, and near σ²(C − 1)²/(C s²): Σ_W ≈ σ² I and Σ_B has
    C − 1 equal eigenvalues s²/(C − 1) for means of norm s."""
    rng = np.random.default_rng(100 + c)
    d, sigma, scale = c + 4, 0.05, 2.0
    mu = simplex_etf(rng, c, d, scale) + rng.standard_normal(d)
    y = np.repeat(np.arange(c), 150)
    rng.shuffle(y)
    h = mu[y] + sigma * rng.standard_normal((len(y), d))
    weight = mu - mu.mean(axis=0)
    got = collapse(h, y, weight, y)
    want = reference(h, y, weight, y)
    assert_matches(got, want)
    assert got["nc1"] > 0.0
    assert got["nc1"] == pytest.approx(sigma ** 2 * (c - 1) ** 2 / (c * scale ** 2), rel=0.15)
    assert got["nc4"] == 0.0  # noise far below the distance between means


def test_weights_orthogonal_to_means_give_nc3_two():
    rng = np.random.default_rng(11)
    c, d = 5, 12
    h, y, _, pred = random_problem(rng, c, d)
    _, means = ref_means(h, y)
    m = np.column_stack([mu - sum(means) / c for mu in means])  # d×C
    q, _ = np.linalg.qr(m)  # orthonormal basis containing span(M)
    weight = rng.standard_normal((c, d))
    weight -= (weight @ q) @ q.T  # every row orthogonal to every centred mean
    assert np.abs(weight @ m).max() < 1e-10
    assert collapse(h, y, weight, pred)["nc3"] == pytest.approx(2.0, abs=1e-12)
    assert collapse(h, y, 2.5 * m.T, pred)["nc3"] == pytest.approx(0.0, abs=1e-12)
    assert collapse(h, y, -m.T, pred)["nc3"] == pytest.approx(4.0, abs=1e-12)


def test_nc4_counts_disagreement_with_nearest_mean():
    rng = np.random.default_rng(12)
    c = 5
    h, y, weight, _ = random_problem(rng, c, 7)
    classes, means = ref_means(h.astype(np.float64), y)
    nearest = np.array(ref_nearest(h, classes, means))
    assert collapse(h, y, weight, nearest)["nc4"] == 0.0
    assert collapse(h, y, weight, (nearest + 1) % c)["nc4"] == 1.0
    flipped = nearest.copy()
    flipped[:13] = (flipped[:13] + 2) % c
    assert collapse(h, y, weight, flipped)["nc4"] == pytest.approx(13 / len(y), abs=1e-15)


# ---------------------------------------------------------------------------- closed forms


def axis_spread(d: int, sigma: float) -> np.ndarray:
    """±σ e_k for each axis: mean 0, Σ_k v vᵀ = 2σ² I over its 2d rows."""
    return np.concatenate([sigma * np.eye(d), -sigma * np.eye(d)])


def test_two_classes_closed_form():
    """Means b ± a, within-class deviations ±σ e_k (class 0 twice over: 4d samples vs 2d).
    Σ_W = (4σ² + 2σ²) I / 6d = σ²/d I, Σ_B = a aᵀ, so NC1 = σ²/(2 d ‖a‖²); NC2 is 0 for two
    opposite equal-norm means (only with the class-balanced global mean)."""
    rng = np.random.default_rng(21)
    d, sigma = 6, 0.7
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    spread = axis_spread(d, sigma)
    h = np.concatenate([b + a + spread, b + a + spread, b - a + spread])
    y = np.array([0] * (4 * d) + [1] * (2 * d))
    weight = np.stack([a, -a])
    got = collapse(h, y, weight, y)
    assert got["nc1"] == pytest.approx(sigma ** 2 / (2 * d * float(a @ a)), rel=RTOL)
    for key in ("nc2_equinorm", "nc2_equiangular", "nc2_etf", "nc3", "nc4"):
        assert got[key] == pytest.approx(0.0, abs=1e-12), key
    assert_matches(got, reference(h, y, weight, y))


def test_unequal_norms_closed_form():
    """Centred means (1,0), (−1,0), (0,3), (0,−3): norms 1, 1, 3, 3 (mean 2, population std 1),
    so equinorm = 1/2; cosines −1 (two pairs) and 0 (four pairs), so equiangularity =
    (2·|−1 + 1/3| + 4·|1/3|)/6 = 4/9; the Gram matrix G has ‖G‖²_F = 4 + 4·81 = 328 and
    ⟨G, I − 11ᵀ/4⟩ = tr G = 20, so the ETF distance is √(2 − 2·20/(√3·√328)).
    With deviations ±σ e_k: Σ_W = σ²/2 I, Σ_B = diag(1/2, 9/2), NC1 = σ²/2·(2 + 2/9)/4 = 5σ²/18."""
    rng = np.random.default_rng(22)
    sigma = 0.4
    m = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    offset = rng.standard_normal(2)
    spread = axis_spread(2, sigma)
    repeats = [1, 3, 2, 1]  # imbalanced
    h = np.concatenate([np.tile(offset + m[j] + spread, (r, 1)) for j, r in enumerate(repeats)])
    y = np.repeat(np.arange(4), [4 * r for r in repeats])
    weight = m.copy()
    got = collapse(h, y, weight, y)
    assert got["nc2_equinorm"] == pytest.approx(0.5, rel=RTOL)
    assert got["nc2_equiangular"] == pytest.approx(4 / 9, rel=RTOL)
    assert got["nc2_etf"] == pytest.approx(math.sqrt(2 - 40 / (math.sqrt(3) * math.sqrt(328))),
                                           rel=RTOL)
    assert got["nc1"] == pytest.approx(5 * sigma ** 2 / 18, rel=RTOL)
    assert got["nc3"] == pytest.approx(0.0, abs=1e-12)
    assert got["nc4"] == 0.0
    assert_matches(got, reference(h, y, weight, y))


# ---------------------------------------------------------------------------- absent classes


def test_absent_classes_are_left_out():
    rng = np.random.default_rng(31)
    present, num_classes, d = np.array([1, 3, 4, 7]), 8, 6
    h, local, w_present, local_pred = random_problem(rng, len(present), d)
    y, pred = present[local], present[local_pred]
    pred[:5] = 0  # a prediction of an absent class always disagrees
    weight = rng.standard_normal((num_classes, d))
    weight[present] = w_present
    got = collapse(h, y, weight, pred)
    assert got["classes"] == 4
    # The same problem relabelled 0..3 with only the present rows of W.
    relabel = {int(cls): j for j, cls in enumerate(present)}
    pred_local = np.array([relabel.get(int(p), -1) for p in pred])
    assert_matches(got, reference(h, local, w_present, pred_local))
    assert_matches(got, reference(h, y, weight, pred))
    weight[[0, 2, 5, 6]] = 1e6 * rng.standard_normal((4, d))  # absent rows do not matter
    assert_matches(collapse(h, y, weight, pred), got, rtol=0.0)


@pytest.mark.parametrize("labels", [[2, 2, 2], [0]])
def test_fewer_than_two_classes_raises(labels):
    y = np.array(labels)
    h = np.arange(3.0 * len(y)).reshape(len(y), 3)
    with pytest.raises(ValueError, match="two classes"):
        collapse(h, y, np.ones((3, 3)), y)


# ---------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("c,d", [(3, 5), (5, 3), (10, 16)])
def test_scale_invariance(c, d):
    """Features × α and W × β (α, β > 0) leave NC1, NC2, NC3 (and NC4) unchanged."""
    rng = np.random.default_rng(40 + c)
    h, y, weight, pred = random_problem(rng, c, d)
    base = collapse(h, y, weight, pred)
    for alpha, beta in [(1e-3, 7.0), (250.0, 0.02), (3.0, 3.0)]:
        got = collapse(alpha * h, y, beta * weight, pred)
        assert_matches(got, base, atol=1e-12)


@pytest.mark.parametrize("c,d", [(3, 5), (5, 3), (10, 16)])
def test_rotation_and_translation_invariance(c, d):
    """h → hQ (W → WQ) for orthogonal Q, and h → h + b, leave every measure unchanged."""
    rng = np.random.default_rng(50 + c)
    h, y, weight, pred = random_problem(rng, c, d)
    base = collapse(h, y, weight, pred)
    q = random_rotation(rng, d)
    assert_matches(collapse(h @ q, y, weight @ q, pred), base, atol=1e-12)
    assert_matches(collapse(h + 10.0 * rng.standard_normal(d), y, weight, pred), base, atol=1e-12)


def test_sample_order_does_not_matter():
    rng = np.random.default_rng(60)
    h, y, weight, pred = random_problem(rng, 5, 4)
    perm = rng.permutation(len(y))
    assert_matches(collapse(h[perm], y[perm], weight, pred[perm]), collapse(h, y, weight, pred),
                   atol=1e-12)
