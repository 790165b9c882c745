"""Rows: a task with one target per token position (masked where it does not count) goes through
the same loop, evaluation, KD loss, fidelity, κ subsets, cka features and report as
classification. A tiny sequence dataset and model are registered for these tests only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from kdcli.config import DistillConfig, TrainConfig
from kdcli.data.base import Dataset, Split
from kdcli.task import IGNORE, Task, classification
from kdcli.train.loop import evaluate

VOCAB, LENGTH = 7, 6


class Tokens(Dataset):
    """Windows of 6 tokens; the target of a position is the next token, the last one ignored."""

    name = "test_tokens"
    num_classes = VOCAB
    input_shape = (LENGTH,)

    @property
    def task(self) -> Task:
        return Task("sequence", VOCAB, "permutation", primary="test_loss",
                    pi="relative_reduction", masked=True)

    def _load(self):
        g = torch.Generator().manual_seed(self.args["seed"])

        def split(n: int) -> Split:
            x = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
            y = torch.roll(x, -1, 1)
            y[:, -1] = IGNORE
            return Split(x, y, torch.arange(n))

        return split(80), split(40)


class TinyLM(nn.Module):
    def __init__(self, num_classes: int, input_shape, width: int = 8):
        super().__init__()
        self.features = nn.Embedding(num_classes, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.tanh(self.features(x)))  # [B, T, V]


@pytest.fixture
def tokens(monkeypatch):
    from kdcli.data.registry import DATASETS, dataset_names
    from kdcli.models.registry import MODELS, model_names

    dataset_names(), model_names()  # the built-in entries first, then ours beside them
    monkeypatch.setitem(DATASETS, "test_tokens", lambda seed=0: Tokens({"seed": int(seed)}))
    monkeypatch.setitem(MODELS, "test_tiny_lm", TinyLM)


def _cfg(out, cls=TrainConfig, **kw):
    base = dict(out=str(out), dataset="test_tokens", model="test_tiny_lm", steps=12, batch_size=16,
                lr=1e-2, threads=1, device="cpu", eval_every="6")
    if kw.get("teacher"):
        base.pop("dataset"), base.pop("model")
    return cls(**{**base, **kw})


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_rows_flatten_positions_and_mask_ignored_targets():
    task = Tokens({"seed": 0}).task
    logits, targets = torch.randn(3, LENGTH, VOCAB), torch.randint(0, VOCAB, (3, LENGTH))
    targets[:, -1] = IGNORE
    s, y = task.rows(logits, targets)
    assert s.shape == (3 * LENGTH, VOCAB) and torch.equal(s[LENGTH + 2], logits[1, 2])
    assert task.mask(targets).sum() == 3 * (LENGTH - 1)
    assert classification(10).mask(torch.zeros(4, dtype=torch.long)) is None
    feats = torch.randn(3, LENGTH, 2, 4)
    assert torch.equal(task.feature_rows(feats)[LENGTH + 2], feats[1, 2].flatten())
    assert classification(10).feature_rows(feats).shape == (3, LENGTH * 8)


def test_evaluation_matches_a_float64_reference_over_counted_rows():
    data = Tokens({"seed": 1})
    test = data.test()
    torch.manual_seed(0)
    student, teacher = TinyLM(VOCAB, (LENGTH,)), TinyLM(VOCAB, (LENGTH,))
    from kdcli.teacher import OnlineRows

    got = evaluate(student, test, data.task, data.model_input, 7, torch.device("cpu"),
                   OnlineRows(teacher.eval()))
    with torch.no_grad():
        s = student(test.x).double().numpy().reshape(-1, VOCAB)
        t = teacher(test.x).double().numpy().reshape(-1, VOCAB)
    y = test.y.numpy().reshape(-1)
    keep = y != IGNORE
    s, t, y = s[keep], t[keep], y[keep]
    ls, lt = _log_softmax(s), _log_softmax(t)
    assert got["test_loss"] == pytest.approx(-ls[np.arange(len(y)), y].mean(), rel=1e-6)
    assert got["test_acc"] == pytest.approx((s.argmax(1) == y).mean(), abs=1e-12)
    assert got["teacher_agreement"] == pytest.approx((s.argmax(1) == t.argmax(1)).mean(), abs=1e-12)
    assert got["teacher_kl"] == pytest.approx((np.exp(lt) * (lt - ls)).sum(1).mean(), rel=1e-6)


def test_kd_loss_on_token_rows_matches_a_float64_reference():
    from kdcli.losses.objective import KDLoss
    from kdcli.teacher import TeacherRows

    task = Tokens({"seed": 0}).task
    s = torch.randn(4, LENGTH, VOCAB, requires_grad=True)
    t = torch.randn(4, LENGTH, VOCAB)
    y = torch.randint(0, VOCAB, (4, LENGTH))
    y[:, -1] = IGNORE

    class Fixed(TeacherRows):
        def __call__(self, positions, x):
            return t

    tau, alpha = 2.0, 0.7
    got = KDLoss(task, tau, alpha, "eager", Fixed())(s, None, y, None)
    sd, td, yd = s.detach().double().numpy().reshape(-1, VOCAB), t.double().numpy().reshape(-1, VOCAB), \
        y.numpy().reshape(-1)
    keep = yd != IGNORE
    sd, td, yd = sd[keep], td[keep], yd[keep]
    ls, lt = _log_softmax(sd / tau), _log_softmax(td / tau)
    kl = tau ** 2 * (np.exp(lt) * (lt - ls)).sum(1)
    ce = -_log_softmax(sd)[np.arange(len(yd)), yd]
    assert got.item() == pytest.approx((alpha * kl + (1 - alpha) * ce).mean(), rel=1e-5)


def test_permutation_subsets_are_nested_and_seeded():
    from kdcli.data import kappa_subset

    data = Tokens({"seed": 0})
    small, large = kappa_subset(data, 0.25, 3), kappa_subset(data, 0.5, 3)
    assert len(small.indices) == 20 and len(large.indices) == 40
    assert list(large.indices[:20]) == list(small.indices)
    assert list(kappa_subset(data, 0.25, 4).indices) != list(small.indices)
    assert list(small.indices) == list(np.random.default_rng(3).permutation(80)[:20])


def test_sequence_runs_train_distill_and_report(tokens, tmp_path):
    from kdcli.stages import distill, report, train

    teacher = train.run(_cfg(tmp_path / "teacher", stage="train-teacher", steps=30))
    assert teacher.run["task"]["kind"] == "sequence" and teacher.run["task"]["primary"] == "test_loss"
    assert [r["step"] for r in teacher.rows] == [6, 12, 18, 24, 30]
    labels = train.run(_cfg(tmp_path / "lab", teacher=str(teacher.run_dir), kappa=0.5))
    kd = distill.run(_cfg(tmp_path / "kd", DistillConfig, teacher=str(teacher.run_dir), kappa=0.5, tau=1.0))
    for run in (labels.run, kd.run):
        assert run["subset"]["size"] == 40 and {"teacher_agreement", "teacher_kl"} <= set(run["final"])
    # the smoothing control counts token rows, and the pairing of the two arms holds
    ls = train.run(_cfg(tmp_path / "ls", teacher=str(teacher.run_dir), kappa=0.5, match_smoothing_tau=2.0))
    assert 0 < ls.run["config"]["label_smoothing"] < 1

    (row, *_) = [r for r in report.run(report.ReportConfig(root=str(tmp_path))).rows if r["arm"].startswith("kd")]
    lab_loss, kd_loss = labels.run["final"]["test_loss"], kd.run["final"]["test_loss"]
    assert row["metric"] == "test_loss" and row["pi"] == pytest.approx(100 * (lab_loss - kd_loss) / lab_loss)


def test_cka_features_are_one_row_per_position(tokens, tmp_path):
    from kdcli.config import CKAConfig
    from kdcli.stages import cka, train

    a = train.run(_cfg(tmp_path / "a", stage="train-teacher"))
    b = train.run(_cfg(tmp_path / "b", stage="train-teacher", seed=1))
    res = cka.run(CKAConfig(run_a=str(a.run_dir), run_b=str(b.run_dir), out=str(tmp_path / "c.parquet"),
                            estimators=("linear",), threads=1, device="cpu"))
    (row,) = res.rows
    # one row per position whose target counts (the last of each window does not)
    assert row["n"] == 40 * (LENGTH - 1) and row["d_a"] == 8  # the embedding: 8 features per position
    _, layers = cka.layers(str(a.run_dir))
    assert {layer.name: layer.shape for layer in layers}["features"] == (8,)
    assert json.loads((a.run_dir / "run.json").read_text())["task"]["kind"] == "sequence"
