"""What every dataset provides: in-memory splits, its task, a fingerprint, a description."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from kdcli.errors import ConfigError
from kdcli.io.hashing import sha256_array
from kdcli.task import Task, classification


@dataclass(frozen=True)
class Split:
    """One split held in memory. `index` is each sample's id in the split's canonical order."""

    x: torch.Tensor  # float32 features, uint8 images [N, C, H, W], or int64 token windows
    y: torch.Tensor  # int64 targets: [N] classes, or [N, T] tokens (IGNORE where none counts)
    index: torch.Tensor  # int64

    def __len__(self) -> int:
        return len(self.y)

    def take(self, positions: torch.Tensor) -> Split:
        return Split(self.x[positions], self.y[positions], self.index[positions])


class Dataset:
    """Base class. Subclasses set the attributes and implement `_load`.

    `args` are the canonical arguments that rebuild the dataset (recorded in every
    artifact); `data_dir` is where it was read from, kept apart from the
    fingerprint so the same data at another path matches.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    image: bool = False  # uint8 images: supports crop/flip augmentation
    extensible: bool = False  # can supply train samples beyond the pool (κ > 1)
    mean: tuple[float, ...] | None = None  # per-channel normalisation of images
    std: tuple[float, ...] | None = None
    class_names: list[str] | None = None

    @property
    def task(self) -> Task:
        """What the rows are, how κ subsets are ordered, and which metric PI is computed from."""
        return classification(self.num_classes)

    def __init__(self, args: dict, data_dir: str | None = None):
        self.args = args
        self.data_dir = data_dir

    def _load(self) -> tuple[Split, Split]:
        raise NotImplementedError

    @cached_property
    def _splits(self) -> tuple[Split, Split]:
        return self._load()

    def train(self) -> Split:
        """The pool: the samples a teacher trains on (n_T of them)."""
        return self._splits[0]

    def test(self) -> Split:
        return self._splits[1]

    def extra(self, n: int) -> Split:
        """n fresh train samples after the pool, for κ > 1 (extensible datasets only)."""
        raise ConfigError(f"dataset {self.name!r} has no samples beyond its train split; κ must be ≤ 1")

    def extra_tests(self) -> dict[str, Split]:
        """Further test splits by name (e.g. an out-of-distribution text); metrics on each are
        recorded with the name as prefix. None by default."""
        return {}

    @property
    def token_bytes(self) -> torch.Tensor | None:
        """Bytes of text each class (token) stands for, [V], for bits per byte; None when the
        classes are not text."""
        return None

    def split(self, name: str) -> Split:
        if name not in ("train", "test"):
            raise ConfigError(f"--split must be 'train' or 'test', got {name!r}")
        return self.train() if name == "train" else self.test()

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.name.encode())
        h.update(json.dumps(self.args, sort_keys=True).encode())
        for split in self._splits:
            for t in (split.x, split.y, split.index):
                h.update(sha256_array(t.numpy()).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        """What artifacts record: enough to rebuild the dataset and check it is the same."""
        return {
            "name": self.name,
            "args": self.args,
            "data_dir": self.data_dir,
            "fingerprint": self.fingerprint,
            "num_classes": self.num_classes,
            "task": self.task.describe(),
            "input_shape": list(self.input_shape),
            "n_train": len(self.train()),
            "n_test": len(self.test()),
        }

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Model input from stored samples (uint8 images become standardised floats)."""
        if not self.image:
            return x
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std


def as_split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x)),
                 torch.from_numpy(np.ascontiguousarray(y).astype(np.int64)),
                 torch.arange(len(y), dtype=torch.int64))
