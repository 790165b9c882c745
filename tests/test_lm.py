"""Language models end to end on `--dataset text`: every stage, the next-token shift of dumped
logits, offline ≡ online with full rows, α = 0 ≡ train-labels, LM metrics against float64
formulas, and the bad inputs of text runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdcli.config import CKAConfig, DistillConfig, DumpConfig, TrainConfig
from kdcli.errors import ConfigError, KdcliError
from kdcli.stages import cka, distill, dump_logits, report, train
from tests.conftest import same_weights, weights

WORDS = ("the king queen lord love night day sweet fair death heart eyes hand time life man "
         "good world thou thee thy doth hath shall will not what how when where why café naïve "
         "—").split()


def write_corpus(folder, n_words=12000, seed=0) -> None:
    """English-like lines of random words (with a few non-ASCII characters), one file."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_words // 8):
        words = rng.choice(WORDS, size=8)
        lines.append(" ".join(words).capitalize() + rng.choice([".", ",", "!", "?"]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


BYTES = {"tokenizer": "bytes", "block": 16, "chunk": 2000, "test_fraction": 0.2}


def _cfg(out, corpus, cls=TrainConfig, **kw):
    base = dict(out=str(out), dataset="text", data_dir=str(corpus), dataset_args=dict(BYTES),
                model="test_gpt", steps=20, batch_size=16, lr=3e-3, threads=1, device="cpu",
                eval_every="10", checkpoint_every="0")
    if kw.get("teacher") or kw.get("logits"):
        for k in ("dataset", "dataset_args", "model", "data_dir"):
            base.pop(k)
    return cls(**{**base, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    write_corpus(folder)
    return folder


@pytest.fixture(scope="module")
def lm_teacher(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "teacher"
    train.run(_cfg(out, corpus, stage="train-teacher", steps=40))
    return out


@pytest.fixture(scope="module")
def dense_logits(lm_teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-logits") / "full.parquet"
    dump_logits.run(DumpConfig(teacher=str(lm_teacher), out=str(path), device="cpu", batch_size=7))
    return path


def _dataset(run_dir):
    from kdcli.data import dataset_from_description

    run = json.loads((run_dir / "run.json").read_text())
    return dataset_from_description(run["dataset"], None, "test")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_teacher_run_records_the_lm_task_and_metrics(lm_teacher):
    run = json.loads((lm_teacher / "run.json").read_text())
    assert run["task"]["kind"] == "sequence" and run["task"]["pi"] == "relative_reduction"
    assert run["dataset"]["tokenizer"]["kind"] == "bytes"
    final = run["final"]
    assert final["test_ppl"] == pytest.approx(math.exp(final["test_loss"]))
    assert 0 < final["test_bpb"] < 8 and 0 <= final["test_acc"] <= 1


def test_lm_metrics_match_float64_formulas(lm_teacher, corpus, tmp_path):
    """A student with the teacher: CE, perplexity, bits per byte, top-1, agreement and KL."""
    from kdcli.io.checkpoint import load_model

    student = train.run(_cfg(tmp_path / "s", corpus, teacher=str(lm_teacher), kappa=0.5, steps=10))
    data = _dataset(lm_teacher)
    test = data.test()
    s_model, _ = load_model(student.run_dir / "model.safetensors")
    t_model, _ = load_model(lm_teacher / "model.safetensors")
    with torch.no_grad():
        s = s_model.eval()(test.x).double().numpy().reshape(-1, data.num_classes)
        t = t_model.eval()(test.x).double().numpy().reshape(-1, data.num_classes)
    y = test.y.numpy().reshape(-1)
    ls, lt = _log_softmax(s), _log_softmax(t)
    ce = -ls[np.arange(len(y)), y]
    text_bytes = len(y)  # the bytes tokenizer: every target token is one byte of text
    final = student.run["final"]
    assert final["test_loss"] == pytest.approx(ce.mean(), rel=1e-5)
    assert final["test_ppl"] == pytest.approx(math.exp(ce.mean()), rel=1e-5)
    assert final["test_bpb"] == pytest.approx(ce.sum() / (math.log(2) * text_bytes), rel=1e-5)
    assert final["test_acc"] == pytest.approx((s.argmax(1) == y).mean(), abs=1e-12)
    assert final["teacher_agreement"] == pytest.approx((s.argmax(1) == t.argmax(1)).mean(), abs=1e-12)
    assert final["teacher_kl"] == pytest.approx((np.exp(lt) * (lt - ls)).sum(1).mean(), rel=1e-4)
    # the predictions file: a fixed sample of positions, the same in every run on this test split
    from kdcli.io.predictions import read_predictions

    p = read_predictions(student.run_dir / "predictions.safetensors")
    assert len(p.rows) == min(2048, len(y)) and (np.diff(p.rows) > 0).all()
    assert p.targets.tolist() == y[p.rows].tolist()
    np.testing.assert_allclose(p.log_probs.astype(np.float64), ls[p.rows], rtol=2e-3, atol=2e-3)
    assert read_predictions(lm_teacher / "predictions.safetensors").rows.tolist() == p.rows.tolist()


def test_dumped_logits_line_up_with_next_token_targets(lm_teacher, dense_logits):
    from kdcli.io.checkpoint import load_model
    from kdcli.io.logits import read_logits, read_metadata

    data = _dataset(lm_teacher)
    train_split = data.train()
    # targets are the inputs shifted by one token
    assert torch.equal(train_split.y[:, :-1], train_split.x[:, 1:])
    stored = read_logits(dense_logits, "train")
    assert read_metadata(dense_logits)["positions"] == 16
    assert stored.dense.shape == (len(train_split), 16, data.num_classes)
    model, _ = load_model(lm_teacher / "model.safetensors")
    ids = np.array([5, 0, len(train_split) - 1])
    with torch.no_grad():
        expected = model.eval()(train_split.x[ids]).float()
    torch.testing.assert_close(stored.rows_for(ids, "test"), expected, rtol=1e-5, atol=1e-5)


def test_topk_dump_is_per_position_and_distills(lm_teacher, tmp_path):
    from kdcli.io.logits import read_logits

    path = tmp_path / "top8.parquet"
    dump_logits.run(DumpConfig(teacher=str(lm_teacher), out=str(path), topk=8, dtype="float16",
                               device="cpu", batch_size=5))
    data = _dataset(lm_teacher)
    stored = read_logits(path, "test")
    assert stored.topk_values.shape == (len(data.test()), 16, 8) and stored.lse.shape == (len(data.test()), 16)
    for tail in ("uniform", "bucket"):
        kd = distill.run(_cfg(tmp_path / f"kd-{tail}", None, DistillConfig, logits=str(path), kappa=0.5,
                              tau=2.0, topk_tail=tail))
        assert kd.run["kd"]["topk"] == 8 and kd.run["kd"]["topk_tail"] == tail
        assert kd.run["kd"]["backend"] == "topk" and np.isfinite(kd.run["final"]["test_loss"])


def test_full_offline_rows_equal_online_distillation(lm_teacher, dense_logits, tmp_path):
    online = distill.run(_cfg(tmp_path / "on", None, DistillConfig, teacher=str(lm_teacher), kappa=0.5,
                              tau=2.0, kd_backend="eager"))
    offline = distill.run(_cfg(tmp_path / "off", None, DistillConfig, logits=str(dense_logits),
                               kappa=0.5, tau=2.0, kd_backend="eager"))
    assert online.run["kd"]["mode"] == "online" and offline.run["kd"]["mode"] == "offline"
    a, b = weights(online.run_dir), weights(offline.run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert online.run["final"]["test_loss"] == pytest.approx(offline.run["final"]["test_loss"], rel=1e-4)


def test_alpha_zero_is_train_labels_bit_for_bit(lm_teacher, tmp_path):
    labels = train.run(_cfg(tmp_path / "lab", None, teacher=str(lm_teacher), kappa=0.3, seed=3))
    kd = distill.run(_cfg(tmp_path / "kd", None, DistillConfig, teacher=str(lm_teacher), kappa=0.3, seed=3,
                          alpha=0.0))
    assert same_weights(labels.run_dir, kd.run_dir)
    assert labels.run["subset"]["sha256"] == kd.run["subset"]["sha256"]


def test_report_and_cka_on_lm_runs(lm_teacher, tmp_path):
    for seed in (0, 1):
        train.run(_cfg(tmp_path / f"lab{seed}", None, teacher=str(lm_teacher), kappa=0.5, seed=seed))
        distill.run(_cfg(tmp_path / f"kd{seed}", None, DistillConfig, teacher=str(lm_teacher), kappa=0.5,
                         seed=seed, tau=1.0))
    res = report.run(report.ReportConfig(root=str(tmp_path), plots=False))
    (row,) = res.rows
    assert row["metric"] == "test_loss" and row["pairs"] == 2
    (part,) = res.kinds
    (bv,) = part.variance_rows  # over the two seeds, on the sampled positions
    assert bv["n_seeds"] == 2 and bv["rows"] == min(2048, 16 * len(_dataset(lm_teacher).test()))
    from kdcli.io.predictions import read_predictions
    from kdcli.report.variance import decompose
    from tests.test_variance import reference_terms

    # the KD arm's terms on 300 sampled positions against the float64 textbook formulas
    files = [read_predictions(tmp_path / f"kd{seed}" / "predictions.safetensors") for seed in (0, 1)]
    lp, y = np.stack([f.log_probs for f in files])[:, :300], files[0].targets[:300]
    got, ref = decompose(lp, y), reference_terms(lp.astype(np.float64), y)
    for name in ("ce", "ce_bias", "ce_variance", "err_bias", "disagreement"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-9, atol=1e-12)
    assert bv["arm_ce_bias"] + bv["arm_ce_variance"] == pytest.approx(bv["arm_ce"])
    got = cka.run(CKAConfig(run_a=str(lm_teacher), run_b=str(tmp_path / "kd0"), out=str(tmp_path / "c.parquet"),
                            estimators=("linear",), threads=1, device="cpu", max_samples=20))
    (r,) = got.rows
    assert r["n"] == 20 * 16 and r["d_a"] == r["d_b"] == 16  # a row per token; the final norm's width
    assert 0 <= r["value"] <= 1 + 1e-6


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("topk", [256, 300])
def test_topk_at_or_above_the_vocabulary_is_refused(lm_teacher, tmp_path, topk):
    out = tmp_path / "l.parquet"
    with pytest.raises(ConfigError, match=f"--topk {topk}"):
        dump_logits.run(DumpConfig(teacher=str(lm_teacher), out=str(out), topk=topk, device="cpu"))
    assert not out.exists()


def test_topk_of_zero_is_refused():
    with pytest.raises(ConfigError, match="--topk"):
        DumpConfig(teacher="t", out="l.parquet", topk=0)


def test_topk_file_with_a_dense_backend_is_refused(lm_teacher, tmp_path):
    path = tmp_path / "top4.parquet"
    dump_logits.run(DumpConfig(teacher=str(lm_teacher), out=str(path), topk=4, device="cpu"))
    with pytest.raises(ConfigError, match="--kd-backend fused: .*top-4 rows"):
        distill.run(_cfg(tmp_path / "kd", None, DistillConfig, logits=str(path), kd_backend="fused"))
    assert not (tmp_path / "kd").exists()


def test_large_vocabulary_needs_topk(lm_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(dump_logits, "DENSE_MAX_VOCAB", 100)  # the bytes teacher has 256 tokens
    out = tmp_path / "l.parquet"
    with pytest.raises(ConfigError, match="--topk: a vocabulary of 256 tokens is too large"):
        dump_logits.run(DumpConfig(teacher=str(lm_teacher), out=str(out), device="cpu"))
    assert not out.exists()


@pytest.mark.parametrize("kw, words", [
    ({"kappa": 1.5}, "--kappa 1.5"),
    ({"model_args": {"block": 8}}, "window length"),
    ({"model_args": {"vocab_size": 300}}, "vocab_size=300"),
    ({"dataset_args": {**BYTES, "tokenizer": "bpe", "vocab": 512}}, "--dataset-arg"),
])
def test_student_bad_input_is_refused_before_writing(lm_teacher, tmp_path, kw, words):
    out = tmp_path / "s"
    with pytest.raises(KdcliError, match=words):
        train.run(_cfg(out, None, teacher=str(lm_teacher), **kw))
    assert not out.exists()


def test_logits_of_another_tokenizer_are_refused(lm_teacher, corpus, tmp_path):
    """A logits file dumped from a teacher of another tokenizer (a BPE over the same text)
    cannot serve a student of the bytes teacher, nor stand in for it."""
    other = train.run(_cfg(tmp_path / "bpe", corpus, stage="train-teacher", steps=2,
                           dataset_args={**BYTES, "tokenizer": "bpe", "vocab": 512}))
    path = tmp_path / "bpe.parquet"
    dump_logits.run(DumpConfig(teacher=str(other.run_dir), out=str(path), topk=4, device="cpu"))
    out = tmp_path / "kd"
    with pytest.raises(KdcliError, match="was dumped from teacher"):
        distill.run(_cfg(out, None, DistillConfig, teacher=str(lm_teacher), logits=str(path)))
    with pytest.raises(KdcliError, match="fingerprint"):
        cka.run(CKAConfig(run_a=str(lm_teacher), run_b=str(other.run_dir), out=str(tmp_path / "c.parquet"),
                          estimators=("linear",), threads=1, device="cpu"))
    assert not out.exists() and not (tmp_path / "c.parquet").exists()


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import sys

    from kdcli.cli.main import main

    monkeypatch.delenv("KDCLI_DEBUG", raising=False)

    (tmp_path / "empty").mkdir()
    bad = tmp_path / "latin1"
    bad.mkdir()
    (bad / "a.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("too short")
    cases = [(tmp_path / "empty", "no .txt"), (bad, "a.txt"), (short, "window")]
    for folder, words in cases:
        out = tmp_path / "run"
        monkeypatch.setattr(sys, "argv", [
            "kdcli", "train-teacher", "--dataset", "text", "--data-dir", str(folder), "--model", "test_gpt",
            "--dataset-arg", "tokenizer=bytes", "--dataset-arg", "chunk=4", "--out", str(out),
            "--steps", "1", "--threads", "1", "--device", "cpu"])
        with pytest.raises(SystemExit) as info:
            main()
        err = capsys.readouterr().err.strip()
        assert info.value.code == 1 and err.startswith("Error:") and len(err.splitlines()) == 1, err
        assert words in err and not out.exists()
