"""scikit-learn's bundled 8x8 digits: 1,797 samples, for fast tests and smoke runs."""

from __future__ import annotations

import numpy as np

from kdcli.data.base import Dataset, Split, as_split
from kdcli.data.registry import register_dataset
from kdcli.errors import ConfigError


class Digits(Dataset):
    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)
    class_names = [str(i) for i in range(10)]

    def _load(self) -> tuple[Split, Split]:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = (data.images.astype(np.float32) / 16.0 - 0.5) / 0.5  # pixel values are 0..16
        y = data.target.astype(np.int64)
        # A fixed seeded split (the bundled data has no test split).
        order = np.random.default_rng(self.args["split_seed"]).permutation(len(y))
        n_test = self.args["n_test"]
        test, train = order[:n_test], order[n_test:]
        return as_split(x[train, None], y[train]), as_split(x[test, None], y[test])


@register_dataset("digits")
def digits(n_test: int = 397, split_seed: int = 0) -> Digits:
    if not 10 <= int(n_test) <= 1000:
        raise ConfigError(f"--dataset-arg n_test={n_test}: expected 10..1000 of the 1,797 digits")
    return Digits({"n_test": int(n_test), "split_seed": int(split_seed)})
