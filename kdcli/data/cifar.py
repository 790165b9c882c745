"""CIFAR-10/100 from a local folder in torchvision's layout; never downloaded.

torchvision's files are Python pickles. They are read with an unpickler that
only admits the numpy array reconstruction they need, so a doctored file
cannot execute code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from kdcli.data.base import Dataset, Split, as_split
from kdcli.data.parquet_images import CIFAR_MEAN, CIFAR_STD
from kdcli.data.registry import register_dataset
from kdcli.errors import ConfigError, DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    # protocol 5 (Python 3.14's default) rebuilds arrays from a buffer
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"--data-dir: {path} not found (expected torchvision's CIFAR layout)")
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:
        raise DataError(f"{path}: not a CIFAR batch file ({exc})") from None


class CIFAR(Dataset):
    image = True
    input_shape = (3, 32, 32)
    mean, std = CIFAR_MEAN, CIFAR_STD

    def __init__(self, name: str, data_dir: str):
        super().__init__({}, data_dir)
        self.name = name
        self.num_classes = 10 if name == "cifar10" else 100
        if name == "cifar10":
            base = Path(data_dir) / "cifar-10-batches-py"
            self.files = {"train": [base / f"data_batch_{i}" for i in range(1, 6)], "test": [base / "test_batch"]}
            self.label_key, meta_file, names_key = "labels", base / "batches.meta", "label_names"
        else:
            base = Path(data_dir) / "cifar-100-python"
            self.files = {"train": [base / "train"], "test": [base / "test"]}
            self.label_key, meta_file, names_key = "fine_labels", base / "meta", "fine_label_names"
        if not base.is_dir():
            raise DataError(f"--data-dir {data_dir}: no {base.name}/ folder there "
                            f"(expected torchvision's {name} layout, already extracted)")
        self.class_names = list(_load_batch(meta_file)[names_key]) if meta_file.is_file() else None

    def _read(self, split: str) -> Split:
        batches = [_load_batch(p) for p in self.files[split]]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).astype(np.uint8)
        y = np.concatenate([np.asarray(b[self.label_key]) for b in batches])
        return as_split(x, y)

    def _load(self) -> tuple[Split, Split]:
        return self._read("train"), self._read("test")


def _build(name: str, data_dir: str | None) -> CIFAR:
    if not data_dir:
        raise ConfigError(f"--data-dir is required for dataset {name!r} (torchvision layout; kdcli never downloads)")
    return CIFAR(name, str(Path(data_dir).resolve()))


@register_dataset("cifar10")
def cifar10(data_dir: str | None = None) -> CIFAR:
    return _build("cifar10", data_dir)


@register_dataset("cifar100")
def cifar100(data_dir: str | None = None) -> CIFAR:
    return _build("cifar100", data_dir)
