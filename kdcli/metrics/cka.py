"""Centered kernel alignment (CKA) between two representations of the same n inputs.

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))

Estimators (Kornblith et al. 2019, "Similarity of neural network representations
revisited"; Nguyen, Raghu & Kornblith 2021, "Do wide and deep networks learn the
same things?"):

- linear: K = XXᵀ. With centred features HSIC ∝ ‖YᵀX‖²_F, computed either in
  feature space (d×d products, O(n·d²)) or through the n×n Grams (O(n²·d)); each
  representation takes the cheaper form, i.e. the Gram when n < d.
- rbf: K_ij = exp(−‖x_i − x_j‖² / (2σ²·m)), m the median of the squared pairwise
  distances over all n² pairs (diagonal included), exactly as in the paper's
  reference notebook; the bandwidth is σ × (median distance).
- debiased: HSIC replaced by its unbiased U-statistic (Song et al. 2012), here in
  the U-centring form of Székely & Rizzo (2014). Biased CKA of independent
  features is far from 0 when d ≳ n; debiased CKA is ≈ 0.
- minibatch: unbiased linear HSIC averaged over minibatches (`MinibatchCKA`);
  memory is constant in the number of samples.

Numerics: features are converted to float64 and centred *before* any product.
A Gram of uncentred float32 features centred afterwards loses everything to a
constant offset (1000 + x gives entries ~1e6·d, of which float32 keeps 7 digits).
Every reduction runs in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from kdcli.errors import DataError

FORMS = ("auto", "gram", "features")


# ---------------------------------------------------------------------------- inputs


def centred_features(x, name: str = "x") -> torch.Tensor:
    """A column-centred float64 copy of an [n, d] array or tensor; other shapes and NaN/inf
    raise DataError."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise DataError(f"{name}: expected a 2-D [n samples, d features] array, got shape {tuple(t.shape)}")
    t = t.to(torch.float64, copy=True)
    means = t.mean(0)
    if not bool(torch.isfinite(means).all()):  # any NaN/inf makes its column mean non-finite
        bad = int((~torch.isfinite(t).all(1)).sum())
        raise DataError(f"{name}: features contain NaN or inf in {bad} of {len(t)} samples; "
                        "CKA needs finite features")
    return t.sub_(means)


def _pair(x, y, debiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = centred_features(x, "x"), centred_features(y, "y")
    if len(x) != len(y):
        raise DataError(f"x and y: {len(x)} vs {len(y)} samples; CKA compares two representations "
                        "of the same inputs, row i of each")
    check_n(len(x), debiased)
    return x, y


def check_n(n: int, debiased: bool, what: str = "n") -> None:
    need = 4 if debiased else 2
    if n < need:
        kind = "debiased (unbiased-HSIC)" if debiased else "biased"
        raise DataError(f"{what} = {n}: the {kind} CKA estimator needs at least {need} samples")


def centre(x: torch.Tensor) -> torch.Tensor:
    """A column-centred copy of a float64 tensor."""
    return x - x.mean(0, keepdim=True)


def choose_form(n: int, d: int) -> str:
    """Feature space costs O(n·d²) time and d² memory, the Gram O(n²·d) and n²: pick by min(n, d)."""
    return "gram" if n < d else "features"


def double_centre(k: torch.Tensor) -> torch.Tensor:
    """H K H for a symmetric K (H = I − 11ᵀ/n), in place."""
    means = k.mean(0)
    means -= means.mean() / 2
    k -= means[:, None]
    k -= means[None, :]
    return k


def u_centre(k: torch.Tensor) -> torch.Tensor:
    """Székely & Rizzo's U-centring of a symmetric K, in place: ⟨Ũ(K), Ũ(L)⟩ / (n(n−3)) is the
    unbiased HSIC of Song et al. (2012)."""
    n = len(k)
    k.fill_diagonal_(0)
    means = k.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None]
    k -= means[None, :]
    k.fill_diagonal_(0)
    return k


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


# ---------------------------------------------------------------------------- kernels


class LinearKernel:
    """One representation prepared for linear HSIC: its centred features, or their n×n Gram.

    Only tr(K·L), diag(K) and tr(K) are needed (features are centred, so K = XXᵀ is
    already doubly centred); tr(K·L) takes the cheapest route the two sides allow.
    """

    def __init__(self, x: torch.Tensor | None = None, gram: torch.Tensor | None = None):
        self.x, self.gram = x, gram  # centred features [n, d], or their Gram [n, n]
        self.n = len(x if x is not None else gram)
        self.form = "gram" if gram is not None else "features"
        self._sq_rows: torch.Tensor | None = None
        self._self: dict[bool, float] = {}

    @classmethod
    def from_features(cls, x: torch.Tensor, form: str = "auto") -> LinearKernel:
        """x: centred float64 features [n, d] (see `centred_features`)."""
        if form == "auto":
            form = choose_form(*x.shape)
        if form not in ("gram", "features"):
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        return cls(gram=x @ x.T) if form == "gram" else cls(x=x)

    def take(self, idx: torch.Tensor) -> LinearKernel:
        """The kernel of the samples idx (with repeats, for the bootstrap), recentred."""
        if self.gram is not None:
            return LinearKernel(gram=double_centre(self.gram[idx][:, idx]))
        return LinearKernel(x=centre(self.x[idx]))

    @property
    def sq_rows(self) -> torch.Tensor:
        """diag(K): each sample's squared norm (only the debiased estimator needs it)."""
        if self._sq_rows is None:
            self._sq_rows = (self.gram.diagonal().clone() if self.gram is not None
                             else torch.einsum("ij,ij->i", self.x, self.x))
        return self._sq_rows

    def trace_product(self, other: LinearKernel) -> float:
        """tr(K·L) = ‖YᵀX‖²_F."""
        a, b = (self, other) if self.gram is not None or other.gram is None else (other, self)
        if a.gram is not None and b.gram is not None:
            return _dot(a.gram, b.gram)  # O(n²)
        if a.gram is not None:
            return _dot(a.gram @ b.x, b.x)  # tr(Yᵀ K Y), O(n²·d_y)
        m = b.x.T @ a.x  # O(n·d_x·d_y)
        return _dot(m, m)

    def hsic(self, other: LinearKernel, debiased: bool) -> float:
        if other is self and debiased in self._self:
            return self._self[debiased]
        n, t = self.n, self.trace_product(other)
        if not debiased:
            value = t / (n - 1) ** 2
        else:
            # The unbiased HSIC with centred features, where K·1 = 0 (Kornblith et al.'s notebook).
            sa, sb = self.sq_rows, other.sq_rows
            value = (t - n / (n - 2) * _dot(sa, sb)
                     + float(sa.sum()) * float(sb.sum()) / ((n - 1) * (n - 2))) / (n * (n - 3))
        if other is self:
            self._self[debiased] = value
        return value


class RBFKernel:
    """One representation's centred Gaussian kernel (biased: HKH; debiased: U-centred)."""

    def __init__(self, sqdist: torch.Tensor, sigma: float, debiased: bool, keep_distances: bool = False):
        self.n, self.sigma, self.debiased = len(sqdist), sigma, debiased
        self.sqdist = sqdist if keep_distances else None
        sq_median = _median_sq_distance(sqdist)
        if not sq_median > 0:
            raise DataError("features: at least half of the pairwise distances are 0 (repeated or "
                            "constant samples); the median-distance RBF bandwidth is undefined")
        scale = -1.0 / (2 * sigma**2 * sq_median)
        k = sqdist.mul(scale) if keep_distances else sqdist.mul_(scale)
        k.exp_()
        self.centred = u_centre(k) if debiased else double_centre(k)
        self._self: float | None = None

    @classmethod
    def from_features(cls, x: torch.Tensor, sigma: float = 1.0, debiased: bool = False,
                      keep_distances: bool = False) -> RBFKernel:
        """x: centred float64 features [n, d] (see `centred_features`): distances do not change,
        and centring spares ‖a‖² + ‖b‖² − 2a·b its cancellation."""
        g = x @ x.T
        sq = g.diagonal().clone()
        sqdist = g.mul_(-2).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0)
        sqdist.fill_diagonal_(0)
        return cls(sqdist, sigma, debiased, keep_distances)

    def take(self, idx: torch.Tensor) -> RBFKernel:
        """The kernel of the samples idx, with the bandwidth re-estimated on them."""
        if self.sqdist is None:
            raise ValueError("build the kernel with keep_distances=True to resample it")
        return RBFKernel(self.sqdist[idx][:, idx], self.sigma, self.debiased)

    def hsic(self, other: RBFKernel, debiased: bool) -> float:
        assert debiased == self.debiased == other.debiased, "kernel built for the other estimator"
        if other is self and self._self is not None:
            return self._self
        scale = self.n * (self.n - 3) if debiased else (self.n - 1) ** 2
        value = _dot(self.centred, other.centred) / scale
        if other is self:
            self._self = value
        return value


def _median_sq_distance(sqdist: torch.Tensor) -> float:
    """np.median over all n² entries (diagonal zeros included; the mean of the two middle values
    for an even count), as in the reference notebook, from the upper triangle alone.

    Sorted, the n² entries are n zeros followed by each off-diagonal value twice, so the
    k-th smallest (1-based, k > n) is the ⌈(k − n)/2⌉-th smallest of the upper triangle.
    """
    n = len(sqdist)
    total = n * n
    ranks = [total // 2 + 1] if total % 2 else [total // 2, total // 2 + 1]
    if sqdist.device.type != "cpu":
        flat = sqdist.reshape(-1)
        return sum(float(flat.kthvalue(k).values) for k in ranks) / len(ranks)
    d = sqdist.numpy()
    upper = np.empty(n * (n - 1) // 2)
    pos = 0
    for i in range(n - 1):
        upper[pos:pos + n - 1 - i] = d[i, i + 1:]
        pos += n - 1 - i
    want = sorted({-(-(k - n) // 2) - 1 for k in ranks if k > n})
    if want:
        upper.partition(want)
    values = [0.0 if k <= n else float(upper[-(-(k - n) // 2) - 1]) for k in ranks]
    return sum(values) / len(values)


def cka(a, b, debiased: bool, names: tuple[str, str] = ("x", "y")) -> float:
    """CKA of two prepared kernels of the same samples."""
    return _ratio(a.hsic(b, debiased), a.hsic(a, debiased), b.hsic(b, debiased), names)


def _ratio(xy: float, xx: float, yy: float, names: tuple[str, str]) -> float:
    for name, self_hsic in zip(names, (xx, yy)):
        if not self_hsic > 0:
            raise DataError(f"{name}: the features are constant over the samples (zero self-"
                            "similarity); CKA is undefined")
    return xy / math.sqrt(xx * yy)


# ---------------------------------------------------------------------------- entry points


def linear_cka(x, y, debiased: bool = False, form: str = "auto") -> float:
    """Linear CKA of two [n, d] arrays or tensors (row i of each is the same input).

    form: 'auto' (each side takes the cheaper of feature space and Gram), 'gram' or 'features'.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    x, y = _pair(x, y, debiased)
    return cka(LinearKernel.from_features(x, form), LinearKernel.from_features(y, form), debiased)


def rbf_cka(x, y, sigma: float = 1.0, debiased: bool = False) -> float:
    """RBF CKA with bandwidth sigma × the median pairwise distance (of each representation)."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise DataError(f"sigma = {sigma}: the RBF bandwidth factor must be a number > 0")
    x, y = _pair(x, y, debiased)
    return cka(RBFKernel.from_features(x, sigma, debiased), RBFKernel.from_features(y, sigma, debiased),
               debiased)


class MinibatchCKA:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021): unbiased linear HSIC averaged over batches.

        acc = MinibatchCKA()
        for xb, yb in batches:         # row i of xb and yb: the same input
            acc.update(xb, yb)
        acc.value()

    `update` also takes lists of layers, [x1, x2, ...] and [y1, ...]; `matrix()` is then
    the [len(xs), len(ys)] CKA matrix. Only three small arrays per batch are kept, so
    memory does not grow with the number of samples. Each batch needs ≥ 4 samples.
    """

    def __init__(self, names_x: Sequence[str] | None = None, names_y: Sequence[str] | None = None,
                 form: str = "auto"):
        self.names_x, self.names_y, self.form = names_x, names_y, form
        self._xy: list[np.ndarray] = []  # per batch: [Lx, Ly]
        self._xx: list[np.ndarray] = []  # per batch: [Lx]
        self._yy: list[np.ndarray] = []  # per batch: [Ly]
        self.n = 0

    @property
    def batches(self) -> int:
        return len(self._xy)

    def update(self, x, y) -> None:
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        ys = list(y) if isinstance(y, (list, tuple)) else [y]
        if self._xy and (len(xs), len(ys)) != self._xy[0].shape:
            raise ValueError(f"update with {len(xs)}×{len(ys)} layers after {self._xy[0].shape}")
        nx, ny = self._names(len(xs), len(ys))
        kx = [LinearKernel.from_features(centred_features(v, name), self.form) for v, name in zip(xs, nx)]
        ky = [LinearKernel.from_features(centred_features(v, name), self.form) for v, name in zip(ys, ny)]
        m = kx[0].n
        if any(k.n != m for k in kx + ky):
            raise DataError(f"minibatch: the layers hold different numbers of samples "
                            f"({sorted({k.n for k in kx + ky})}); rows must be the same inputs")
        check_n(m, True, "minibatch size")
        self._xx.append(np.array([k.hsic(k, True) for k in kx]))
        self._yy.append(np.array([k.hsic(k, True) for k in ky]))
        self._xy.append(np.array([[a.hsic(b, True) for b in ky] for a in kx]))
        self.n += m

    def _names(self, lx: int, ly: int) -> tuple[list[str], list[str]]:
        nx = list(self.names_x) if self.names_x else (["x"] if lx == 1 else [f"x[{i}]" for i in range(lx)])
        ny = list(self.names_y) if self.names_y else (["y"] if ly == 1 else [f"y[{i}]" for i in range(ly)])
        return nx, ny

    def matrix(self, batches: np.ndarray | None = None) -> np.ndarray:
        """CKA for every (x layer, y layer); `batches` selects (resamples) batches for a bootstrap."""
        if not self._xy:
            raise DataError("minibatch CKA: no batches were added")
        sel = slice(None) if batches is None else batches
        xy = np.stack(self._xy)[sel].mean(0)
        xx = np.stack(self._xx)[sel].mean(0)
        yy = np.stack(self._yy)[sel].mean(0)
        nx, ny = self._names(len(xx), len(yy))
        out = np.empty_like(xy)
        for i in range(len(xx)):
            for j in range(len(yy)):
                out[i, j] = _ratio(xy[i, j], xx[i], yy[j], (nx[i], ny[j]))
        return out

    def value(self) -> float:
        m = self.matrix()
        if m.shape != (1, 1):
            raise ValueError(f"value() is for one pair of layers; this holds {m.shape}: use matrix()")
        return float(m[0, 0])
