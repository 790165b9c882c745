"""The `text` dataset: chunked train/test splits, byte and BPE tokenizers, windows, caches, errors.

Expected values come from references written here: chunks cut with plain slicing,
windows with a Python loop, a BPE trained directly with Hugging Face `tokenizers`,
GPT-2's byte alphabet for token lengths, numpy's permutation for κ subsets.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcli.data import build_dataset, dataset_from_description, dataset_names, kappa_subset
from kdcli.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]
REAL = SHARED_DATA / "text"
TRAIN = "a.txt,b.txt"  # the synthetic corpus's train files (ood.txt is there too)
SMALL = {"files": TRAIN, "chunk": 1500, "block": 32, "vocab": 600}  # ~20 chunks, BPE in ~0.1 s
BYTES = {"files": TRAIN, "tokenizer": "bytes", "block": 32, "chunk": 1500}
ODD_TEXTS = ["", "a", " leading and trailing space ", "\r\n\t\x00\x7f", "e\u0301 vs é", "Grüße, naïve café",
             "日本語のテキスト", "🙂 👨‍👩‍👧 🏳️‍🌈", "\ufeffBOM", "ＦＵＬＬＷＩＤＴＨ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a\u2028b\u0085c"]


def prose(seed: int, n_words: int) -> str:
    """Seeded pseudo-prose: syllable words with accents, CJK, emoji, punctuation and newlines."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "the", "ing", "ü", "é", "ß", "日", "本", "🙂", "qu", "st", "an", "re"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    gaps = [" ", " ", " ", ", ", ". ", "\n", "; "]
    return "".join(rng.choice(words) + rng.choice(gaps) for _ in range(n_words))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("KDCLI_CACHE_DIR", str(path))
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text(prose(0, 2200), encoding="utf-8")
    (root / "b.txt").write_text(prose(1, 1800), encoding="utf-8")
    (root / "ood.txt").write_text(prose(2, 600), encoding="utf-8")
    (root / "notes.md").write_text("not a .txt file", encoding="utf-8")
    return root


def ref_chunks(texts: list[str], chunk: int, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    chunks = [t[i:i + chunk] for t in texts for i in range(0, len(t), chunk)]
    n_test = max(1, round(fraction * len(chunks)))
    test = set(np.random.default_rng(seed).permutation(len(chunks))[:n_test].tolist())
    return ([c for i, c in enumerate(chunks) if i not in test], [c for i, c in enumerate(chunks) if i in test])


def ref_windows(seqs: list[list[int]], block: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for t in seqs:
        s = 0
        while s + block + 1 <= len(t):
            xs.append(t[s:s + block])
            ys.append(t[s + 1:s + block + 1])
            s += block
    return np.array(xs, dtype=np.int64).reshape(-1, block), np.array(ys, dtype=np.int64).reshape(-1, block)


def ref_bpe(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        special_tokens=[]))
    return tok


def gpt2_byte_of() -> dict[str, int]:
    """GPT-2's printable character for each byte, inverted (what ByteLevel uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def texts_of(root: Path, *names: str) -> list[str]:
    return [(root / n).read_text(encoding="utf-8") for n in names]


# ------------------------------------------------------------------ splits and windows


def test_registered_and_canonical_args(corpus):
    assert "text" in dataset_names()
    ds = build_dataset("text", {"tokenizer": "bytes", "vocab": "256", "block": "32", "chunk": "1500",
                                "test_fraction": "0.2", "seed": "3", "ood": "ood.txt"}, str(corpus))
    assert ds.args == {"files": "a.txt,b.txt", "tokenizer": "bytes", "vocab": 256, "block": 32,
                       "test_fraction": 0.2, "chunk": 1500, "seed": 3, "ood": "ood.txt"}
    assert ds.data_dir == str(corpus.resolve())
    json.dumps(ds.args)
    assert build_dataset("text", ds.args, ds.data_dir).fingerprint == ds.fingerprint
    assert build_dataset("text", {"tokenizer": "bytes"}, str(corpus)).args["files"] == "a.txt,b.txt,ood.txt"


def test_bytes_windows_are_shifted_slices_of_the_split_chunks(corpus):
    ds = build_dataset("text", {**BYTES, "seed": 5}, str(corpus))
    pool, test = ref_chunks(texts_of(corpus, "a.txt", "b.txt"), 1500, 0.1, 5)
    assert ds.num_classes == ds.task.outputs == 256 and ds.input_shape == (32,)
    for split, chunks in ((ds.train(), pool), (ds.test(), test)):
        x, y = ref_windows([list(c.encode("utf-8")) for c in chunks], 32)
        assert split.x.dtype == split.y.dtype == split.index.dtype == torch.int64
        assert np.array_equal(split.x.numpy(), x) and np.array_equal(split.y.numpy(), y)
        assert np.array_equal(split.x.numpy()[:, 1:], split.y.numpy()[:, :-1])  # y is x shifted by one
        assert np.array_equal(split.index.numpy(), np.arange(len(x)))
    assert not set(pool) & set(test)  # no chunk of text in both splits
    assert len(ds.train()) == ds.describe()["n_train"]


def test_bpe_windows_and_tokenizer_trained_on_the_pool_only(corpus):
    ds = build_dataset("text", {**SMALL, "seed": 2}, str(corpus))
    pool, test = ref_chunks(texts_of(corpus, "a.txt", "b.txt"), 1500, 0.1, 2)
    ref = ref_bpe(pool, 600)
    assert ds.tokenizer.sha256 == hashlib.sha256(ref.to_str().encode()).hexdigest()
    assert ds.tokenizer.sha256 != hashlib.sha256(ref_bpe(pool + test, 600).to_str().encode()).hexdigest()
    assert ds.num_classes == ds.task.outputs == ref.get_vocab_size()
    for split, chunks in ((ds.train(), pool), (ds.test(), test)):
        x, y = ref_windows([ref.encode(c).ids for c in chunks], 32)
        assert np.array_equal(split.x.numpy(), x) and np.array_equal(split.y.numpy(), y)
    task = ds.task
    assert (task.kind, task.subsets, task.primary, task.pi, task.masked) == \
        ("sequence", "permutation", "test_loss", "relative_reduction", False)
    assert task.metrics == ("test_loss", "test_acc")


@pytest.mark.parametrize("fraction,chunk", [(0.1, 1500), (0.25, 1500), (0.5, 700), (0.01, 3000)])
def test_test_fraction_counts_chunks(corpus, fraction, chunk):
    ds = build_dataset("text", {**BYTES, "chunk": chunk, "test_fraction": fraction}, str(corpus))
    n = sum(math.ceil(len(t) / chunk) for t in texts_of(corpus, "a.txt", "b.txt"))
    assert len(ds.test_chunks) == max(1, round(fraction * n)) and len(ds.pool_chunks) + len(ds.test_chunks) == n
    assert (ds.pool_chunks, ds.test_chunks) == ref_chunks(texts_of(corpus, "a.txt", "b.txt"), chunk, fraction, 0)


def test_ood_split_is_whole_files_with_the_train_tokenizer(corpus):
    ds = build_dataset("text", {**SMALL, "files": "", "ood": "ood.txt"}, str(corpus))
    assert ds.args["files"] == TRAIN  # the ood file is left out of the default train files
    ood = ds.extra_tests()["ood"]
    ref = ref_bpe(ref_chunks(texts_of(corpus, "a.txt", "b.txt"), 1500, 0.1, 0)[0], 600)
    x, y = ref_windows([ref.encode(texts_of(corpus, "ood.txt")[0]).ids], 32)
    assert np.array_equal(ood.x.numpy(), x) and np.array_equal(ood.y.numpy(), y)
    assert ds.describe()["ood"] == ["ood.txt"]
    assert build_dataset("text", SMALL, str(corpus)).extra_tests() == {}
    assert build_dataset("text", SMALL, str(corpus)).tokenizer.sha256 == ds.tokenizer.sha256  # trained on train only


def test_kappa_subsets_are_nested_prefixes_of_a_seeded_permutation(corpus):
    ds = build_dataset("text", BYTES, str(corpus))
    n = len(ds.train())
    order = np.random.default_rng(7).permutation(n)
    small, large = kappa_subset(ds, 0.25, 7), kappa_subset(ds, 0.5, 7)
    assert np.array_equal(small.indices, order[:math.floor(0.25 * n)])
    assert np.array_equal(large.indices[:len(small.indices)], small.indices)
    assert torch.equal(small.split.x, ds.train().x[torch.from_numpy(small.indices)])
    with pytest.raises(ConfigError, match="--kappa 1.5"):
        kappa_subset(ds, 1.5, 7)


# ------------------------------------------------------------------ tokenizers


def test_round_trip_is_exact(corpus):
    bpe = build_dataset("text", SMALL, str(corpus))
    raw = build_dataset("text", {**BYTES, "vocab": 256}, str(corpus))
    for ds in (bpe, raw):
        for text in ODD_TEXTS + bpe.pool_chunks[:3] + bpe.test_chunks:
            ids = ds.encode(text)
            assert all(0 <= i < ds.num_classes for i in ids)
            assert ds.decode(ids) == text
    assert raw.encode("é🙂") == list("é🙂".encode())


def test_token_bytes_count_utf8_bytes(corpus):
    for args in (SMALL, BYTES):
        ds = build_dataset("text", args, str(corpus))
        tb = ds.token_bytes
        assert tb.dtype == torch.int64 and tuple(tb.shape) == (ds.num_classes,)
        for text in ODD_TEXTS + ds.test_chunks:
            assert int(tb[ds.encode(text)].sum()) == len(text.encode("utf-8"))
    assert ds.token_bytes.tolist() == [1] * 256
    bpe = build_dataset("text", SMALL, str(corpus))
    byte_of, hf = gpt2_byte_of(), bpe.tokenizer.hf
    assert bpe.token_bytes.tolist() == [len(bytes(byte_of[c] for c in hf.id_to_token(i)))
                                        for i in range(hf.get_vocab_size())]


def test_bpe_is_deterministic_across_processes(corpus, tmp_path):
    code = ("import sys; from kdcli.data import build_dataset; "
            f"print(build_dataset('text', {SMALL!r}, sys.argv[1]).tokenizer.sha256)")
    hashes = []
    for run in range(2):
        cache = tmp_path / f"cache-{run}"
        env = {**os.environ, "KDCLI_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code, str(corpus)], env=env, capture_output=True, text=True,
                             check=True, timeout=120)
        (saved,) = (cache / "text").glob("tokenizer-*.json")
        hashes.append((out.stdout.strip(), hashlib.sha256(saved.read_bytes()).hexdigest()))
    assert hashes[0] == hashes[1] and hashes[0][0] == hashes[0][1]
    assert build_dataset("text", SMALL, str(corpus)).tokenizer.sha256 == hashes[0][0]


# ------------------------------------------------------------------ caching and fingerprints


def test_cache_hit_gives_the_same_tokenizer_and_arrays(corpus, cache, monkeypatch):
    from kdcli.data import text

    first = build_dataset("text", {**SMALL, "ood": "ood.txt"}, str(corpus))
    arrays = [t.clone() for s in (first.train(), first.test(), first.extra_tests()["ood"]) for t in (s.x, s.y)]
    (saved,) = (cache / "text").glob("tokenizer-*.json")
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == first.tokenizer.sha256
    assert len(list((cache / "text").glob("tokens-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(text.BPETokenizer, "train", fail)
    monkeypatch.setattr(text.BPETokenizer, "encode_batch", fail)
    again = build_dataset("text", {**SMALL, "ood": "ood.txt"}, str(corpus))
    assert again.tokenizer.sha256 == first.tokenizer.sha256
    cached = [t for s in (again.train(), again.test(), again.extra_tests()["ood"]) for t in (s.x, s.y)]
    assert all(torch.equal(a, b) for a, b in zip(arrays, cached))
    assert again.fingerprint == first.fingerprint


def test_fingerprint_follows_tokenizer_not_path(corpus, tmp_path):
    ds = build_dataset("text", SMALL, str(corpus))
    moved = tmp_path / "elsewhere"
    shutil.copytree(corpus, moved)
    there = build_dataset("text", SMALL, str(moved))
    assert there.fingerprint == ds.fingerprint and there.data_dir != ds.data_dir
    assert build_dataset("text", {**SMALL, "vocab": 700}, str(corpus)).fingerprint != ds.fingerprint
    assert build_dataset("text", {**SMALL, "ood": "ood.txt"}, str(corpus)).fingerprint != ds.fingerprint
    info = ds.describe()
    json.dumps(info)
    assert info["tokenizer"] == {"kind": "bpe", "vocab": ds.num_classes, "sha256": ds.tokenizer.sha256}
    assert info["num_classes"] == info["task"]["outputs"] == ds.num_classes and info["input_shape"] == [32]
    assert dataset_from_description(info, str(moved), "run.json").fingerprint == ds.fingerprint


# ------------------------------------------------------------------ errors


def _build(root, **args):
    return build_dataset("text", {**SMALL, **args}, str(root))


@pytest.mark.parametrize("args,error,match", [
    ({"vocab": 100}, ConfigError, r"--dataset-arg vocab=100.*512\.\.32768"),
    ({"vocab": 40000}, ConfigError, r"--dataset-arg vocab=40000"),
    ({"tokenizer": "bytes", "vocab": 600}, ConfigError, r"vocab=600.*256"),
    ({"tokenizer": "wordpiece"}, ConfigError, r"tokenizer=wordpiece.*bytes, bpe"),
    ({"test_fraction": 0}, ConfigError, r"test_fraction=0"),
    ({"test_fraction": 1}, ConfigError, r"test_fraction=1"),
    ({"block": 0}, ConfigError, r"block=0"),
    ({"files": "missing.txt"}, DataError, r"missing\.txt not found"),
    ({"ood": "missing.txt"}, DataError, r"--dataset-arg ood=.*missing\.txt"),
    ({"files": "../a.txt"}, ConfigError, r"files=\.\./a\.txt"),
    ({"files": "a.txt", "ood": "a.txt"}, ConfigError, r"ood=a\.txt.*a\.txt"),
    ({"files": "a.txt", "chunk": 10**6}, DataError, r"a\.txt make 1 chunk.*--dataset-arg chunk="),
])
def test_bad_arguments_name_the_flag_and_write_nothing(corpus, cache, args, error, match):
    with pytest.raises(error, match=match):
        _build(corpus, **args)
    assert not cache.exists()


def test_data_dir_errors(tmp_path, cache):
    with pytest.raises(ConfigError, match="--data-dir is required for dataset 'text'"):
        build_dataset("text", {})
    with pytest.raises(DataError, match="nowhere.*no such folder"):
        _build(tmp_path / "nowhere", files="")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file.*not a folder"):
        _build(tmp_path / "file", files="")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no text here")
    with pytest.raises(DataError, match=f"{empty}.*no .txt files"):
        _build(empty, files="")
    assert not cache.exists()


def test_bad_files_are_named(corpus, cache):
    (corpus / "latin1.txt").write_bytes("hello wörld".encode() + "café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt.*UTF-8.*byte offset 15"):
        _build(corpus, files="")
    (corpus / "latin1.txt").unlink()
    (corpus / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.txt.*empty"):
        _build(corpus, files="")
    assert not cache.exists()


def test_corpus_shorter_than_a_window(corpus):
    with pytest.raises(DataError, match=r"a\.txt, b\.txt.*block\+1 = 2001 tokens.*--dataset-arg block="):
        _build(corpus, block=2000).train()
    (corpus / "tiny.txt").write_text("too short for a window")
    with pytest.raises(DataError, match=r"tiny\.txt.*block\+1 = 33"):
        _build(corpus, files="a.txt", ood="tiny.txt").extra_tests()


# ------------------------------------------------------------------ the shared text files


@pytest.mark.skipif(not (REAL / "tinyshakespeare.txt").is_file(), reason=f"shared text files not found at {REAL}")
def test_real_text_round_trip_and_bytes_per_token():
    ds = build_dataset("text", {"files": "tinyshakespeare.txt", "ood": "moby_dick.txt", "vocab": 512,
                                "chunk": 65536}, str(REAL))
    assert ds.num_classes == 512
    moby = (REAL / "moby_dick.txt").read_text(encoding="utf-8")
    chunks = ds.pool_chunks + ds.test_chunks + [moby]
    for text, ids in zip(chunks, ds.tokenizer.encode_batch(chunks)):
        assert ds.decode(ids) == text
        assert int(ds.token_bytes[torch.from_numpy(ids)].sum()) == len(text.encode("utf-8"))
    n_bytes = sum(len(c.encode("utf-8")) for c in ds.pool_chunks)
    assert 0.4 < ds.train().x.numel() / n_bytes < 0.7  # BPE 512 compresses English ~2×
    assert len(ds.extra_tests()["ood"]) > 1000
