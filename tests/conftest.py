"""Shared fixtures: a private dataset cache and tiny trained runs reused across tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep generated datasets out of the user's ~/.cache during tests."""
    old = os.environ.get("KDCLI_CACHE_DIR")
    os.environ["KDCLI_CACHE_DIR"] = str(tmp_path_factory.mktemp("kdcli-cache"))
    yield
    if old is None:
        os.environ.pop("KDCLI_CACHE_DIR", None)
    else:
        os.environ["KDCLI_CACHE_DIR"] = old


TINY_MNIST1D = {"n_train": 600, "n_test": 300}


def tiny_config(out, **kw):
    """A TrainConfig that trains in well under a second on mnist1d."""
    from kdcli.config import TrainConfig

    # 600 samples, batch 64: 10 steps per epoch; evaluate and checkpoint once per epoch
    base = dict(out=str(out), dataset="mnist1d", dataset_args=dict(TINY_MNIST1D), model="test_cnn1d",
                epochs=2, batch_size=64, lr=3e-3, threads=1, device="cpu", eval_every="10",
                checkpoint_every="10")
    if kw.get("teacher"):
        base.pop("dataset"), base.pop("dataset_args"), base.pop("model")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory) -> Path:
    """A completed tiny teacher run dir (test_cnn1d on 600 mnist1d samples)."""
    from kdcli.stages import train

    out = tmp_path_factory.mktemp("runs") / "teacher"
    train.run(tiny_config(out, stage="train-teacher", epochs=3))
    return out
