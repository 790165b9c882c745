"""κ subsets: nested, seeded, relative to the teacher's n_T.

A seeded permutation of the pool fixes an order; the κ subset is its first
⌊κ·n_T⌋ samples, so κ=0.1 ⊂ κ=0.2 ⊂ … for one subset seed. The dataset's task
says which permutation: class-stratified for classification, a plain seeded
permutation of samples otherwise (token windows have no class). Stratified: within
each class the samples are shuffled and given keys 0, 1/n_c, 2/n_c, …; sorting
all samples by key (random tie-break) interleaves the classes in proportion, and
the first sample of every class has key 0, so any prefix of at least C samples
holds every class. For κ > 1 the subset is the whole pool followed by the first
⌊κ·n_T⌋ − n_T fresh samples the dataset generates after it (extensible datasets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kdcli.data.base import Dataset, Split
from kdcli.errors import ConfigError
from kdcli.io.hashing import sha256_array


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Positions of the pool in subset order (a permutation of range(len(labels)))."""
    rng = np.random.default_rng(seed)
    key = np.empty(len(labels))
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        key[members] = np.arange(len(members)) / len(members)
    return np.lexsort((rng.random(len(labels)), key))


def permutation_order(n: int, seed: int) -> np.ndarray:
    """Positions of the pool in subset order for tasks without classes."""
    return np.random.default_rng(seed).permutation(n)


def subset_order(dataset: Dataset, seed: int) -> np.ndarray:
    if dataset.task.subsets == "stratified":
        return stratified_order(dataset.train().y.numpy(), seed)
    return permutation_order(len(dataset.train()), seed)


def subset_size(kappa: float, n_pool: int) -> int:
    # The small epsilon keeps ⌊0.29 · 100⌋ at 29 despite binary floating point.
    return math.floor(kappa * n_pool + 1e-9)


@dataclass(frozen=True)
class Subset:
    split: Split  # the samples, in subset order
    kappa: float
    seed: int
    n_pool: int

    @property
    def indices(self) -> np.ndarray:
        return self.split.index.numpy()

    @property
    def sha256(self) -> str:
        return sha256_array(self.indices.astype(np.int64))


def kappa_subset(dataset: Dataset, kappa: float, seed: int) -> Subset:
    if not kappa > 0:
        raise ConfigError(f"--kappa must be > 0, got {kappa}")
    pool = dataset.train()
    n_pool = len(pool)
    size = subset_size(kappa, n_pool)
    if size < 1:
        raise ConfigError(f"--kappa {kappa}: ⌊κ·n_T⌋ = ⌊{kappa}·{n_pool}⌋ = 0 samples; use κ ≥ {1 / n_pool:.2g}")
    if kappa > 1 and not dataset.extensible:
        raise ConfigError(f"--kappa {kappa} > 1 needs a dataset that can generate more samples than the "
                          f"teacher's pool (mnist1d); {dataset.name!r} has only its {n_pool} train samples")
    order = torch.from_numpy(subset_order(dataset, seed))
    if size <= n_pool:
        return Subset(pool.take(order[:size]), kappa, seed, n_pool)
    extra = dataset.extra(size - n_pool)
    ordered = pool.take(order)
    split = Split(torch.cat([ordered.x, extra.x]), torch.cat([ordered.y, extra.y]),
                  torch.cat([ordered.index, extra.index]))
    return Subset(split, kappa, seed, n_pool)
