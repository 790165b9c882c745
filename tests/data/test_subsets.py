"""κ subsets: nested, class-stratified, seeded prefixes of the pool (DESIGN.md, "Subsets")."""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from kdcli.data import build_dataset
from kdcli.data import mnist1d_gen as gen
from kdcli.data.base import Dataset, as_split
from kdcli.data.subsets import kappa_subset, stratified_order, subset_size
from kdcli.errors import ConfigError


class _Toy(Dataset):
    """A non-extensible dataset over given labels (features: the sample id)."""

    name = "toy"
    input_shape = (1,)

    def __init__(self, labels):
        super().__init__({})
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1

    def _load(self):
        x = np.arange(len(self.labels), dtype=np.float32)[:, None]
        return as_split(x, self.labels), as_split(x[:10], self.labels[:10])


@pytest.fixture(scope="module")
def mnist():
    return build_dataset("mnist1d", {"n_train": 1000, "n_test": 100})


def _imbalanced_labels(seed=0):
    """1,000 labels over 10 classes; class 7 has 3 members, class 2 has 600."""
    sizes = [40, 44, 600, 50, 60, 70, 80, 3, 25, 28]
    assert sum(sizes) == 1000
    labels = np.repeat(np.arange(10), sizes)
    return np.random.default_rng(seed).permutation(labels)


def _prefix_counts(labels, order, num_classes):
    onehot = np.eye(num_classes, dtype=np.int64)[labels[order]]
    return np.cumsum(onehot, axis=0)  # row m-1: class counts of the first m samples


# ------------------------------------------------------------ stratified_order


@pytest.mark.parametrize("labels", [np.repeat(np.arange(10), 100), _imbalanced_labels(),
                                    np.array([0] * 97 + [1] * 2 + [2])], ids=["balanced", "imbalanced", "tiny-classes"])
def test_stratified_order_is_a_permutation(labels):
    order = stratified_order(labels, seed=4)
    assert np.array_equal(np.sort(order), np.arange(len(labels)))


def test_first_c_samples_hold_one_per_class():
    for labels in (np.repeat(np.arange(10), 100), _imbalanced_labels(1)):
        for seed in range(5):
            order = stratified_order(labels, seed)
            assert np.array_equal(np.sort(labels[order[:10]]), np.arange(10))


def test_balanced_prefixes_are_within_one_of_proportional():
    labels = np.random.default_rng(2).permutation(np.repeat(np.arange(10), 100))
    counts = _prefix_counts(labels, stratified_order(labels, 0), 10)
    m = np.arange(1, len(labels) + 1)[:, None]
    assert np.abs(counts - m / 10).max() <= 1 + 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_imbalanced_prefixes_interleave_in_proportion(seed):
    labels = _imbalanced_labels(seed)
    n = np.bincount(labels).astype(np.float64)
    C, N = len(n), len(labels)
    counts = _prefix_counts(labels, stratified_order(labels, seed), C).astype(np.float64)
    # The construction sorts keys k/n_c; any prefix is "every key < t, plus some
    # ties at t", so t·n_c ≤ count_c ≤ t·n_c + 1 for one t. Equivalently:
    assert np.all(((counts - 1) / n).max(axis=1) <= (counts / n).min(axis=1) + 1e-12)
    # ... which bounds every class count against the proportional share m·n_c/N:
    m = np.arange(1, N + 1)[:, None]
    share = m * n / N
    assert np.all(counts <= share + 1 + 1e-9)
    assert np.all(counts >= share - C * n / N - 1e-9)


def test_stratified_order_seeded():
    labels = _imbalanced_labels()
    a, b = stratified_order(labels, 7), stratified_order(labels, 7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, stratified_order(labels, 8))


# ----------------------------------------------------------------- kappa_subset


def test_subsets_are_nested_prefixes(mnist):
    kappas = [0.05, 0.1, 0.29, 0.5, 1.0]
    subsets = [kappa_subset(mnist, k, seed=3) for k in kappas]
    full = subsets[-1].indices
    assert np.array_equal(np.sort(full), np.arange(1000))
    for k, s in zip(kappas, subsets, strict=True):
        size = math.floor(Fraction(str(k)) * 1000)
        assert len(s.split) == size == len(s.indices)
        assert np.array_equal(s.indices, full[:size])
        assert s.kappa == k and s.seed == 3 and s.n_pool == 1000


def test_subset_samples_are_the_pool_samples(mnist):
    pool = mnist.train()
    s = kappa_subset(mnist, 0.3, seed=1)
    idx = torch.from_numpy(s.indices)
    assert torch.equal(s.split.x, pool.x[idx]) and torch.equal(s.split.y, pool.y[idx])
    assert s.split.index.dtype == torch.int64


def test_subsets_are_stratified(mnist):
    pool_counts = np.bincount(mnist.train().y.numpy(), minlength=10)
    for k in (0.01, 0.05, 0.1, 0.5):
        s = kappa_subset(mnist, k, seed=0)
        counts = np.bincount(s.split.y.numpy(), minlength=10)
        share = len(s.split) * pool_counts / pool_counts.sum()
        assert counts.min() >= 1
        assert np.all(counts <= share + 1 + 1e-9) and np.all(counts >= share - 10 * pool_counts / 1000 - 1e-9)


def test_every_class_present_with_imbalanced_labels():
    toy = _Toy(_imbalanced_labels())
    for seed in range(10):
        s = kappa_subset(toy, 0.01, seed)  # ⌊0.01·1000⌋ = 10 = C
        assert sorted(s.split.y.tolist()) == list(range(10))
        assert 7 in kappa_subset(toy, 0.02, seed).split.y.tolist()


def test_subset_seeded(mnist):
    a, b, c = (kappa_subset(mnist, 0.2, seed) for seed in (5, 5, 6))
    assert np.array_equal(a.indices, b.indices) and a.sha256 == b.sha256
    assert not np.array_equal(a.indices, c.indices) and a.sha256 != c.sha256


def test_subset_sha256_independent(mnist):
    s = kappa_subset(mnist, 0.1, seed=2)
    idx = np.asarray(s.indices, dtype="<i8")
    # kdcli.io.hashing.sha256_array: sha256 of dtype.str, shape, then little-endian bytes
    expected = hashlib.sha256(b"<i8" + str((len(idx),)).encode() + idx.tobytes()).hexdigest()
    assert s.sha256 == expected


def test_kappa_above_one_extends_pool_with_fresh_samples(mnist):
    pool = mnist.train()
    whole = kappa_subset(mnist, 1.0, seed=4)
    big = kappa_subset(mnist, 1.5, seed=4)
    bigger = kappa_subset(mnist, 2.25, seed=4)
    assert len(big.split) == 1500 and len(bigger.split) == 2250
    assert np.array_equal(big.indices[:1000], whole.indices)  # the pool, in subset order
    assert np.array_equal(big.indices[1000:], np.arange(1000, 1500))
    assert np.array_equal(bigger.indices[:1500], big.indices)  # nested above 1 too
    assert torch.equal(bigger.split.x[:1500], big.split.x)
    assert torch.equal(big.split.x[:1000], pool.x[torch.from_numpy(whole.indices)])
    gx, gy = gen.generate(mnist.args["seed"], "train", 1000, 1500)
    assert np.array_equal(big.split.x[1000:, 0].numpy(), gx)
    assert np.array_equal(big.split.y[1000:].numpy(), gy)
    assert big.n_pool == 1000


def test_kappa_above_one_on_fixed_dataset_is_refused():
    digits = build_dataset("digits")
    assert len(kappa_subset(digits, 1.0, 0).split) == len(digits.train())
    with pytest.raises(ConfigError, match="mnist1d"):
        kappa_subset(digits, 1.5, 0)


@pytest.mark.parametrize("kappa", [0.0, -0.5, float("nan"), 1e-4, 0.0009])
def test_kappa_without_samples_is_refused(mnist, kappa):
    with pytest.raises(ConfigError, match="kappa"):
        kappa_subset(mnist, kappa, 0)


def test_smallest_kappa_gives_one_sample(mnist):
    assert len(kappa_subset(mnist, 0.001, 0).split) == 1


def test_subset_size():
    assert subset_size(0.29, 100) == 29
    assert subset_size(1.0, 600) == 600
    assert subset_size(0.1, 600) == 60
    # against exact rational arithmetic on decimal κ values
    for text in ("0.01", "0.07", "0.1", "0.15", "0.29", "0.3", "0.33", "0.57", "0.7", "1.1", "1.15", "2.3"):
        for n in (7, 100, 600, 999, 4000, 10_000, 123_457, 1_000_000):
            assert subset_size(float(text), n) == math.floor(Fraction(text) * n), (text, n)
