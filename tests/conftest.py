"""Shared fixtures: a private dataset cache and tiny trained runs reused across tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdcli.progress import Progress

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest and immune to oversubscription on a busy machine (a
    second OpenMP thread only waits at barriers on a shared 2-core box). Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Interrupted(Exception):
    """Stands in for a kill (slurm preemption, Ctrl-C) in the middle of a run."""


class InterruptAt(Progress):
    """Raise when step `step` is done, before its evaluation and checkpoint, so the newest
    checkpoint left behind is the one before it."""

    def __init__(self, step: int):
        self.step = step

    def advance(self, done: int | None = None) -> None:
        if done == self.step:
            raise Interrupted


def weights(run_dir) -> dict:
    from kdcli.io.checkpoint import load_tensors

    return load_tensors(Path(run_dir) / "model.safetensors")[0]


def same_weights(a, b) -> bool:
    import torch

    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


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
