"""Logits Parquet: round trips (float32, float16, top-k with its tail) and damaged files."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from kdcli.errors import ArtifactError
from kdcli.io.logits import read_logits, read_metadata, write_logits

META = {"dataset_fingerprint": "abc", "teacher": {"run_id": "r"}}


def _splits(n=50, c=12, seed=0):
    g = np.random.default_rng(seed)
    return {"train": (np.arange(n) * 3, (4 * g.standard_normal((n, c))).astype(np.float32)),
            "test": (np.arange(n // 2), (4 * g.standard_normal((n // 2, c))).astype(np.float32))}


def test_float32_round_trip_is_exact(tmp_path):
    splits = _splits()
    write_logits(tmp_path / "l.parquet", splits, metadata=META)
    for name, (index, logits) in splits.items():
        got = read_logits(tmp_path / "l.parquet", name)
        assert np.array_equal(got.index, index)
        assert got.rows_for(got.index, "test").dtype == torch.float32
        assert np.array_equal(got.rows_for(got.index, "test").numpy(), logits)
    meta = read_metadata(tmp_path / "l.parquet")
    assert meta["num_classes"] == 12 and meta["dtype"] == "float32" and meta["topk"] == 0
    assert meta["dataset_fingerprint"] == "abc"
    schema = pq.read_schema(tmp_path / "l.parquet")
    assert set(schema.names) == {"index", "split", "logits"}


def test_float16_round_trip_is_float16_rounding(tmp_path):
    splits = _splits()
    write_logits(tmp_path / "l.parquet", splits, metadata=META, dtype="float16")
    got = read_logits(tmp_path / "l.parquet", "train")
    expected = splits["train"][1].astype(np.float16).astype(np.float32)
    assert np.array_equal(got.rows_for(got.index, "test").numpy(), expected)


def test_rows_for_looks_up_by_sample_id(tmp_path):
    splits = _splits()
    write_logits(tmp_path / "l.parquet", splits, metadata=META)
    got = read_logits(tmp_path / "l.parquet", "train")
    ids = np.array([27, 0, 147])  # sample ids (row positions 9, 0, 49)
    assert np.array_equal(got.rows_for(ids, "x").numpy(), splits["train"][1][[9, 0, 49]])
    with pytest.raises(ArtifactError, match="1 of the 2 samples"):
        got.rows_for(np.array([3, 4]), "x")


def test_topk_keeps_the_tail_mass(tmp_path):
    splits = _splits(n=40, c=30)
    write_logits(tmp_path / "l.parquet", splits, metadata=META, topk=5)
    assert {"topk_logits", "topk_ids", "lse"} <= set(pq.read_schema(tmp_path / "l.parquet").names)
    dense = read_logits(tmp_path / "l.parquet", "train")
    dense = dense.rows_for(dense.index, "test").double().numpy()
    full = splits["train"][1].astype(np.float64)
    p_true = np.exp(full - full.max(1, keepdims=True))
    p_true /= p_true.sum(1, keepdims=True)
    p_dense = np.exp(dense - dense.max(1, keepdims=True))
    p_dense /= p_dense.sum(1, keepdims=True)
    top = np.argsort(-full, axis=1)[:, :5]
    rows = np.arange(len(full))[:, None]
    # the top-k probabilities at τ = 1 are exact, and the tail keeps its total mass
    np.testing.assert_allclose(p_dense[rows, top], p_true[rows, top], rtol=1e-4, atol=1e-7)
    tail = np.ones_like(full, dtype=bool)
    tail[rows, top] = False
    np.testing.assert_allclose((p_dense * tail).sum(1), (p_true * tail).sum(1), rtol=1e-4, atol=2e-6)  # float32 lse
    # spread equally over the 25 tail classes
    tail_p = p_dense[tail].reshape(len(full), 25)
    np.testing.assert_allclose(tail_p, tail_p[:, :1].repeat(25, 1), rtol=1e-5)


@pytest.mark.parametrize("damage", ["truncate", "not_parquet", "missing"])
def test_damaged_files(tmp_path, damage):
    path = tmp_path / "l.parquet"
    write_logits(path, _splits(), metadata=META)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "not_parquet":
        path.write_text("index,logits\n1,2\n")
    else:
        path.unlink()
    with pytest.raises(ArtifactError, match="l.parquet"):
        read_logits(path, "train")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_refused(tmp_path, bad):
    splits = _splits()
    splits["train"][1][3, 2] = bad
    write_logits(tmp_path / "l.parquet", splits, metadata=META)
    with pytest.raises(ArtifactError, match="1 train rows hold NaN or infinite"):
        read_logits(tmp_path / "l.parquet", "train")


def test_foreign_parquet_is_refused(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(ArtifactError, match="not a kdcli logits file"):
        read_logits(tmp_path / "other.parquet", "train")


def test_a_write_that_fails_at_the_footer_leaves_nothing(tmp_path, monkeypatch):
    """A full disk while the footer is written: no file appears, one ArtifactError names it."""
    import errno

    from kdcli.io.logits import LogitsWriter

    real_close, failed = pq.ParquetWriter.close, []

    def no_space(self):  # the first close fails; the writer's own cleanup closes it later
        if not failed:
            failed.append(True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_close(self)

    monkeypatch.setattr(pq.ParquetWriter, "close", no_space)
    path = tmp_path / "full.parquet"
    with pytest.raises(ArtifactError, match="full.parquet: cannot write"):
        with LogitsWriter(path, META, num_classes=12) as writer:
            writer.write("train", np.arange(4), torch.randn(4, 12))
    assert list(tmp_path.iterdir()) == []


def test_rows_added_after_writing_are_refused(tmp_path):
    """The content sha256 covers every row of a split: rows appended later (the footer kept)
    fail the check."""
    import pyarrow as pa

    path = tmp_path / "l.parquet"
    write_logits(path, _splits(), metadata=META)
    table = pq.read_table(path)
    raw = dict(pq.read_metadata(path).metadata)
    raw.pop(b"ARROW:schema")
    grown = pa.concat_tables([table, table.slice(0, 3)]).replace_schema_metadata(raw)
    pq.write_table(grown, tmp_path / "grown.parquet")
    with pytest.raises(ArtifactError, match="do not match the sha256"):
        read_logits(tmp_path / "grown.parquet", "train")


def test_token_rows_round_trip_top_k_per_position(tmp_path):
    g = np.random.default_rng(0)
    logits = (3 * g.standard_normal((6, 5, 20))).astype(np.float32)  # 6 windows × 5 positions
    write_logits(tmp_path / "l.parquet", {"train": (np.arange(6), logits)}, metadata=META, topk=4)
    got = read_logits(tmp_path / "l.parquet", "train")
    assert read_metadata(tmp_path / "l.parquet")["positions"] == 5
    top = got.topk(torch.tensor([4, 1]))
    assert top.values.shape == (2, 5, 4) and top.lse.shape == (2, 5)
    for b, window in enumerate((4, 1)):
        for t in range(5):
            row = logits[window, t].astype(np.float64)
            assert set(top.ids[b, t].tolist()) == set(np.argsort(-row)[:4].tolist())
            assert top.lse[b, t].item() == pytest.approx(np.log(np.exp(row).sum()), rel=1e-6)
