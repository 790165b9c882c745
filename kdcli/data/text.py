"""Language modelling on local UTF-8 text files: token windows, next-token targets.

Each train file is cut into chunks of `chunk` characters; a seeded draw makes
some chunks the test split and leaves the rest as the train pool, so the splits
are contiguous stretches of text and never share a sentence. The tokenizer is
UTF-8 bytes or a byte-level BPE trained on the pool only (test text never shapes
it). Samples are non-overlapping windows of `block` tokens within a chunk, the
targets the same window shifted by one token. `ood` files give an extra
out-of-distribution test split (e.g. train on Shakespeare, test on Moby Dick too).

Training a BPE and encoding a corpus take seconds, so both are cached: the
tokenizer as its JSON file, the token streams as arrays (windows are cut on load).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from kdcli.data.base import Dataset, Split, as_split
from kdcli.data.cache import cache_dir, cached_arrays
from kdcli.data.registry import register_dataset
from kdcli.errors import ArtifactError, ConfigError, DataError
from kdcli.io.atomic import write_bytes
from kdcli.io.hashing import sha256_array
from kdcli.task import Task

TOKENIZERS = ("bytes", "bpe")
BPE_VOCAB = (512, 32768)  # smallest and largest BPE vocabulary accepted


def _sha_texts(texts: Iterable[str]) -> str:
    """sha256 of a sequence of texts, each length-prefixed so boundaries count."""
    h = hashlib.sha256()
    for t in texts:
        data = t.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class ByteTokenizer:
    """Token = one UTF-8 byte; nothing trained."""

    kind = "bytes"
    vocab_size = 256
    sha256 = hashlib.sha256(b"kdcli text tokenizer: utf-8 bytes").hexdigest()  # no file to hash

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode(), dtype=np.uint8).astype(np.int64) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int64)


class BPETokenizer:
    """Byte-level BPE (Hugging Face `tokenizers`), held as its JSON file's bytes."""

    kind = "bpe"

    def __init__(self, json_bytes: bytes):
        from tokenizers import Tokenizer

        self.hf = Tokenizer.from_str(json_bytes.decode())
        self.sha256 = hashlib.sha256(json_bytes).hexdigest()
        self.vocab_size = self.hf.get_vocab_size()

    @staticmethod
    def train(texts: list[str], vocab: int) -> bytes:
        """The JSON file of a BPE trained on `texts`.

        Deterministic as configured, so no thread setting is needed: the trainer counts
        pairs in parallel but only sums them, the base alphabet (all 256 ByteLevel
        characters) gets its ids in sorted order, and ties between equally frequent pairs
        go to the pair of lower ids. The nondeterminism reported upstream
        (huggingface/tokenizers#1794) comes from continuing-subword prefixes, which this
        tokenizer does not use. Checked across fresh processes, with RAYON_NUM_THREADS=1
        and 2, on real text and on a corpus full of ties; tests/data/test_text.py keeps
        checking it.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False, special_tokens=[])
        tok.train_from_iterator(texts, trainer)
        return tok.to_str().encode()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        # A byte-level token is a string over the 256-character ByteLevel alphabet, one
        # character per raw byte, so its length is the number of bytes it stands for.
        return np.array([len(self.hf.id_to_token(i)) for i in range(self.vocab_size)], dtype=np.int64)


def cached_bpe(texts: list[str], vocab: int) -> BPETokenizer:
    """The BPE trained on `texts`, from cache_dir()/text/ when trained before."""
    import tokenizers

    key = hashlib.sha256(json.dumps([_sha_texts(texts), "bpe", vocab, tokenizers.__version__]).encode())
    path = cache_dir() / "text" / f"tokenizer-{key.hexdigest()}.json"
    if path.is_file():
        try:
            return BPETokenizer(path.read_bytes())
        except Exception:  # noqa: BLE001  a damaged file: trained again below
            pass
    json_bytes = BPETokenizer.train(texts, vocab)
    try:
        write_bytes(path, json_bytes)
    except ArtifactError:
        pass  # an unwritable cache only costs time: training is deterministic
    return BPETokenizer(json_bytes)


def windows(tokens: np.ndarray, lengths: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets [N, block] (int64) from concatenated token sequences.

    Windows start at 0, block, 2·block, … within each sequence while a target follows
    the window's last token, so none crosses from one sequence into the next.
    """
    counts = np.maximum(lengths - 1, 0) // block
    first = np.repeat(np.cumsum(lengths) - lengths, counts)  # where each window's sequence starts
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    starts = first + block * within
    positions = starts[:, None] + np.arange(block)
    tokens = tokens.astype(np.int64)
    return tokens[positions], tokens[positions + 1]


class TextCorpus(Dataset):
    name = "text"

    def __init__(self, args: dict, data_dir: str, texts: dict[str, str], ood_texts: dict[str, str]):
        super().__init__(args, data_dir)
        self.input_shape = (args["block"],)
        self.texts, self.ood_texts = texts, ood_texts
        size = args["chunk"]
        chunks = [t[i:i + size] for t in texts.values() for i in range(0, len(t), size)]
        n_test = max(1, round(args["test_fraction"] * len(chunks)))
        if n_test >= len(chunks):
            raise DataError(f"dataset 'text': {', '.join(texts)} make {len(chunks)} chunk(s) of chunk={size} "
                            f"characters, {n_test} of them test, leaving no train chunk; use a smaller "
                            "--dataset-arg chunk= (or test_fraction=)")
        is_test = np.zeros(len(chunks), dtype=bool)
        is_test[np.random.default_rng(args["seed"]).permutation(len(chunks))[:n_test]] = True
        self.pool_chunks = [c for c, t in zip(chunks, is_test) if not t]
        self.test_chunks = [c for c, t in zip(chunks, is_test) if t]

    @cached_property
    def tokenizer(self) -> ByteTokenizer | BPETokenizer:
        """The tokenizer; a BPE is trained on the train pool (or loaded from the cache)."""
        if self.args["tokenizer"] == "bytes":
            return ByteTokenizer()
        return cached_bpe(self.pool_chunks, self.args["vocab"])

    @property
    def num_classes(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def task(self) -> Task:
        return Task("sequence", self.num_classes, "permutation", primary="test_loss", pi="relative_reduction",
                    masked=False)

    @cached_property
    def token_bytes(self) -> torch.Tensor:
        """UTF-8 bytes each token id stands for [V], int64: bits per byte = Σ CE / (ln 2 · Σ bytes of targets)."""
        return torch.from_numpy(self.tokenizer.token_bytes())

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_batch([text])[0].tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids)

    @cached_property
    def _tokens(self) -> dict[str, np.ndarray]:
        """Token streams and their sequence lengths: train/test per chunk, ood per file.

        Only BPE encodings are cached: bytes encode faster than a cache file loads.
        """
        def make() -> dict[str, np.ndarray]:
            arrays = {}
            for name, seqs in (("train", self.pool_chunks), ("test", self.test_chunks),
                               ("ood", list(self.ood_texts.values()))):
                encoded = self.tokenizer.encode_batch(seqs)
                # uint16 holds every id: vocabularies stop at 32768
                arrays[f"{name}_tokens"] = np.concatenate(encoded + [np.zeros(0, np.int64)]).astype(np.uint16)
                arrays[f"{name}_lengths"] = np.array([len(e) for e in encoded], dtype=np.int64)
            return arrays

        if self.tokenizer.kind == "bytes":
            return make()
        a = self.args
        key = hashlib.sha256(json.dumps([_sha_texts(self.texts.values()), _sha_texts(self.ood_texts.values()),
                                         self.tokenizer.sha256, a["chunk"], a["test_fraction"], a["seed"]]).encode())
        return cached_arrays(f"text/tokens-{key.hexdigest()}", make)

    def _too_short(self, what: str, remedy: str = "") -> DataError:
        block = self.args["block"]
        return DataError(f"dataset 'text': {what} is shorter than one window of block+1 = {block + 1} tokens; "
                         f"use a smaller --dataset-arg block={remedy}")

    def _split(self, name: str, what: str, remedy: str = "") -> Split:
        x, y = windows(self._tokens[f"{name}_tokens"], self._tokens[f"{name}_lengths"], self.args["block"])
        if not len(x):
            raise self._too_short(what, remedy)
        return as_split(x, y)

    def _load(self) -> tuple[Split, Split]:
        files, larger = ", ".join(self.texts), " (or a larger chunk=)"
        return (self._split("train", f"every train chunk of {files}", larger),
                self._split("test", f"every test chunk of {files}", larger))

    @cached_property
    def _ood(self) -> Split | None:
        if not self.ood_texts:
            return None
        for name, n in zip(self.ood_texts, self._tokens["ood_lengths"]):
            if n < self.args["block"] + 1:
                raise self._too_short(name)
        return self._split("ood", ", ".join(self.ood_texts))

    def extra_tests(self) -> dict[str, Split]:
        """Further test splits by name: {"ood": …} when ood files are given."""
        return {} if self._ood is None else {"ood": self._ood}

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256(super().fingerprint.encode())  # name, args, train and test windows
        h.update(self.tokenizer.sha256.encode())
        for split in self.extra_tests().values():
            for t in (split.x, split.y, split.index):
                h.update(sha256_array(t.numpy()).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        tok = self.tokenizer
        return {**super().describe(), "tokenizer": {"kind": tok.kind, "vocab": tok.vocab_size, "sha256": tok.sha256},
                "ood": list(self.ood_texts)}


def _names(value: str, flag: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in str(value).split(",") if n.strip()))
    for n in names:
        if Path(n).name != n or n in (".", ".."):
            raise ConfigError(f"--dataset-arg {flag}={value}: give file names inside --data-dir, not paths ({n!r})")
    return names


def _read(path: Path, flag: str) -> str:
    """A file's text; missing, empty and non-UTF-8 files are DataErrors naming the file."""
    if not path.is_file():
        raise DataError(f"{flag}: {path} not found")
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path}: empty file; leave it out of --dataset-arg files= (or remove it)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {exc.start}); "
                        "dataset 'text' reads UTF-8 files") from None


@register_dataset("text")
def text(data_dir: str | None = None, files: str = "", tokenizer: str = "bpe", vocab: int = 2048,
         block: int = 128, test_fraction: float = 0.1, chunk: int = 32768, seed: int = 0,
         ood: str = "") -> TextCorpus:
    """Next-token prediction on the UTF-8 .txt files in data_dir.

    files: comma-separated names in data_dir ("" = every *.txt there but the ood ones);
    tokenizer: bytes (256 tokens) or bpe (byte-level, `vocab` tokens, trained on the train
    pool); block: tokens per window; chunk: characters per chunk, the unit the seeded
    train/test split draws (test_fraction of them); ood: files for an extra test split.
    """
    if not data_dir:
        raise ConfigError("--data-dir is required for dataset 'text' (a folder of UTF-8 .txt files; "
                          "kdcli never downloads)")
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"--dataset-arg tokenizer={tokenizer}: unknown tokenizer; choose one of "
                          f"{', '.join(TOKENIZERS)}")
    vocab, block, chunk, seed, test_fraction = int(vocab), int(block), int(chunk), int(seed), float(test_fraction)
    if tokenizer == "bytes":
        if vocab not in (256, 2048):  # 2048: the default, left as it is
            raise ConfigError(f"--dataset-arg vocab={vocab}: the bytes tokenizer has exactly 256 tokens; "
                              "leave vocab out")
        vocab = 256
    elif not BPE_VOCAB[0] <= vocab <= BPE_VOCAB[1]:
        raise ConfigError(f"--dataset-arg vocab={vocab}: a BPE vocabulary must be in "
                          f"{BPE_VOCAB[0]}..{BPE_VOCAB[1]}")
    for flag, value in (("block", block), ("chunk", chunk)):
        if value < 1:
            raise ConfigError(f"--dataset-arg {flag}={value}: must be at least 1")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"--dataset-arg test_fraction={test_fraction}: must be between 0 and 1 (exclusive)")

    root = Path(data_dir).resolve()
    if not root.is_dir():
        raise DataError(f"--data-dir {root}: " + ("not a folder" if root.exists() else "no such folder"))
    ood_names = _names(ood, "ood")
    names = _names(files, "files") or sorted(p.name for p in root.glob("*.txt")
                                             if p.is_file() and p.name not in ood_names)
    if not names:
        raise DataError(f"--data-dir {root}: no .txt files there" + (" besides the ood ones" if ood_names else ""))
    if both := sorted(set(names) & set(ood_names)):
        raise ConfigError(f"--dataset-arg ood={ood}: {', '.join(both)} also in the train files; "
                          "an out-of-distribution test file must not be trained on")
    texts = {n: _read(root / n, "--dataset-arg files=") for n in names}
    ood_texts = {n: _read(root / n, "--dataset-arg ood=") for n in ood_names}
    args = {"files": ",".join(names), "tokenizer": tokenizer, "vocab": vocab, "block": block,
            "test_fraction": test_fraction, "chunk": chunk, "seed": seed, "ood": ",".join(ood_names)}
    return TextCorpus(args, str(root), texts, ood_texts)
