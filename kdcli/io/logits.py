"""Teacher logits as Parquet: raw, temperature-free, for the train pool and the test split.

One row per sample: a class row for classification, a window of T token positions for
text. Columns (full): index int64 (sample id in the split's canonical order), split
(dictionary string: train | test), logits fixed_size_list<float16|float32>[P·V] (P = 1,
or T positions). Columns (--topk K): topk_logits fixed_size_list<float>[P·K], topk_ids
fixed_size_list<int32>[P·K], lse: float32 (classification) or fixed_size_list<float32>[T]
— the log-sum-exp of each full row, so the tail's total probability at τ = 1,
1 − Σ exp(topk − lse), is known.

How a top-k row becomes teacher logits (`dense_logits`, and losses/topk.py which works on
the stored values directly): the V − K tail classes share the tail mass equally, i.e. each
gets the logit lse + log(tail_mass / (V − K)). At τ = 1 the teacher's top-k probabilities
and tail mass are then exact; at other τ the tail behaves as V − K equal logits. The tail
mass is never dropped.

Files are written batch by batch (`LogitsWriter`), so dumping never holds a split; each
split's content sha256 covers its rows chunk by chunk in file order (`chunks` records the
rows per chunk) and goes in the file's footer metadata when the last batch is written.
Reading goes through an Arrow memory map and flat buffers straight into tensors; no
Python work per row.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdcli.errors import ArtifactError
from kdcli.io.atomic import atomic_path
from kdcli.io.meta import decode, encode
from kdcli.losses.topk import TopK

LOGITS_FORMAT_VERSION = 3  # 2: `content_sha256` per split, page checksums; 3: rows of T positions, chunked sha
READABLE_VERSIONS = (1, 2, 3)  # version-1 files cannot be checked: they are read as they are


@dataclass
class TeacherLogits:
    """One split's logits from a file, as stored: dense rows ([N, *P, V] float16/float32) or
    top-k rows (values and ids [N, *P, K], log-sum-exp [N, *P]); P = () or (T,). Rows become
    float32 [n, *P, V] only for the rows asked for, so a top-k file of a large vocabulary is
    never densified for a whole split."""

    index: np.ndarray  # int64 [N]: sample ids
    num_classes: int
    dense: torch.Tensor | None = None
    topk_values: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None  # int32 as stored; int64 per batch
    lse: torch.Tensor | None = None  # float32

    def positions_for(self, ids: np.ndarray, what: str) -> torch.Tensor:
        """The file rows of samples `ids`, in that order; every id must be present."""
        lookup = np.full(int(max(self.index.max(initial=-1), ids.max(initial=-1))) + 1, -1, dtype=np.int64)
        lookup[self.index] = np.arange(len(self.index))
        rows = lookup[ids]
        missing = int((rows < 0).sum())
        if missing:
            raise ArtifactError(f"{what}: {missing} of the {len(ids)} samples needed have no logits "
                                f"(e.g. index {int(ids[rows < 0][0])}); dump logits for them "
                                "(dump-logits --extra-train N for κ > 1)")
        return torch.from_numpy(rows)

    def to(self, device) -> TeacherLogits:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TeacherLogits(self.index, self.num_classes, move(self.dense), move(self.topk_values),
                             move(self.topk_ids), move(self.lse))

    def topk(self, positions: torch.Tensor) -> TopK:
        """Top-k rows of file rows `positions` as stored (values as float32)."""
        return TopK(self.topk_values[positions].float(), self.topk_ids[positions].long(), self.lse[positions],
                    self.num_classes)

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Float32 logits [n, *P, V] of file rows `positions` (top-k rows filled in as `dense_logits`)."""
        if self.dense is not None:
            return self.dense[positions].float()
        top = self.topk(positions)
        shape = top.values.shape[:-1]
        flat = top.reshape_rows()
        return dense_logits(flat.values, flat.ids, flat.lse, self.num_classes).reshape(*shape, -1)

    def rows_for(self, ids: np.ndarray, what: str) -> torch.Tensor:
        """Float32 logits of samples `ids`, in that order (small selections only)."""
        return self.rows(self.positions_for(ids, what))


@dataclass
class LogitsWriter:
    """Writes a logits file batch by batch: `write(split, index, logits)` with float32 logits
    [b, *P, V]; the file appears (atomically) when the `with` block ends without an error."""

    path: Path
    metadata: dict
    num_classes: int
    positions: int = 0  # T for rows of T token positions; 0 for one row per sample
    dtype: str = "float32"
    topk: int | None = None
    _hashes: dict = field(default_factory=dict)
    _chunks: dict = field(default_factory=dict)

    def __enter__(self) -> LogitsWriter:
        import pyarrow as pa
        import pyarrow.parquet as pq

        value = pa.float16() if self.dtype == "float16" else pa.float32()
        per_row = max(self.positions, 1)
        if self.topk is None:
            columns = [("logits", pa.list_(value, per_row * self.num_classes))]
        else:
            lse = pa.list_(pa.float32(), self.positions) if self.positions else pa.float32()
            columns = [("topk_logits", pa.list_(value, per_row * self.topk)),
                       ("topk_ids", pa.list_(pa.int32(), per_row * self.topk)), ("lse", lse)]
        meta = {**self.metadata, "format": "kdcli-logits", "format_version": LOGITS_FORMAT_VERSION,
                "num_classes": self.num_classes, "positions": self.positions, "dtype": self.dtype,
                "topk": self.topk or 0}
        self.schema = pa.schema([("index", pa.int64()), ("split", pa.dictionary(pa.int32(), pa.string())),
                                 *columns], metadata=encode(meta))
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._writer = pq.ParquetWriter(tmp, self.schema, write_page_checksum=True)
        except BaseException as err:
            self._atomic.__exit__(type(err), err, err.__traceback__)  # removes the temporary file
            raise
        return self

    def write(self, split: str, index: np.ndarray, logits: torch.Tensor) -> None:
        import pyarrow as pa

        np_dtype = {"float16": np.float16, "float32": np.float32}[self.dtype]
        logits = logits.float().cpu()
        if self.topk is None:
            stored = [logits.numpy().astype(np_dtype)]
        else:
            values, ids = logits.topk(self.topk, dim=-1)
            stored = [values.numpy().astype(np_dtype), ids.numpy().astype(np.int32),
                      torch.logsumexp(logits, dim=-1).numpy().astype(np.float32)]
        index = np.asarray(index, dtype=np.int64)
        h = self._hashes.setdefault(split, hashlib.sha256())
        for a in (index, *stored):
            h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        self._chunks.setdefault(split, []).append(len(index))
        arrays = [pa.array(index),
                  pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(index), np.int32)), pa.array([split]))]
        for a, typ in zip(stored, self.schema.types[2:]):
            flat = pa.array(np.ascontiguousarray(a).reshape(-1), type=getattr(typ, "value_type", typ))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, typ.list_size)
                          if pa.types.is_fixed_size_list(typ) else flat)
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self._writer.add_key_value_metadata(encode({
                    "content_sha256": {k: h.hexdigest() for k, h in self._hashes.items()},
                    "chunks": self._chunks}))
            self._writer.close()  # writes the footer: a full disk shows here
        except BaseException as err:
            if exc[0] is None:  # the file is not whole: never moved into place
                self._atomic.__exit__(type(err), err, err.__traceback__)  # OSError → ArtifactError
                raise
        self._atomic.__exit__(*exc)


def write_logits(path: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], *,
                 metadata: dict, dtype: str = "float32", topk: int | None = None) -> None:
    """splits: name -> (index [N] int64, logits [N, *P, V] float32), each written as one chunk."""
    shape = next(iter(splits.values()))[1].shape
    with LogitsWriter(Path(path), metadata, shape[-1], shape[1] if len(shape) == 3 else 0,
                      dtype, topk) as writer:
        for name, (index, logits) in splits.items():
            writer.write(name, index, torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)))


def content_sha256(arrays: list[np.ndarray], chunks: list[int] | None = None) -> str:
    """sha256 over the bytes of a split's stored columns, chunk by chunk in file order (the
    index, then each stored column, of each chunk); no `chunks`: the split is one chunk."""
    h = hashlib.sha256()
    bounds = np.cumsum([0, *(chunks or [len(arrays[0])])])
    for a, b in zip(bounds[:-1], bounds[1:]):
        for arr in arrays:
            h.update(np.ascontiguousarray(arr[a:b]).reshape(-1).view(np.uint8))
    return h.hexdigest()


def read_metadata(path: str | Path, flag: str = "--logits") -> dict:
    """The decoded metadata of a logits file (schema and footer); ArtifactError if not one."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{flag} {path}: file not found")
    try:
        raw = dict(pq.read_metadata(path).metadata or {})
    except Exception as exc:
        raise ArtifactError(f"{flag} {path}: not a readable Parquet file, it may be truncated ({exc})") from None
    raw.pop(b"ARROW:schema", None)
    decoded = decode(raw)
    if decoded.get("format") != "kdcli-logits":
        raise ArtifactError(f"{flag} {path}: not a kdcli logits file (no kdcli schema metadata)")
    if decoded.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{flag} {path}: logits format version {decoded.get('format_version')}, "
                            f"this kdcli reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    if decoded["format_version"] >= 2 and "content_sha256" not in decoded:
        raise ArtifactError(f"{flag} {path}: was not written to the end (no content sha256); "
                            "dump the logits again (dump-logits --overwrite)")
    return decoded


def _flat(column) -> torch.Tensor:
    """A fixed-size-list column's values as one flat tensor: zero-copy for a single chunk,
    else copied chunk by chunk into one array (never a second whole copy at once).

    The memory may be a read-only Arrow buffer; torch warns about that, but kdcli
    only ever indexes these tensors (which copies), so the warning is silenced.
    """
    import pyarrow as pa

    chunks = [c.flatten() if pa.types.is_fixed_size_list(c.type) else c for c in column.chunks]
    if len(chunks) == 1:
        values = chunks[0].to_numpy(zero_copy_only=False)
    else:
        values = np.empty(sum(len(c) for c in chunks), dtype=chunks[0].type.to_pandas_dtype())
        at = 0
        for c in chunks:
            values[at:at + len(c)] = c.to_numpy(zero_copy_only=False)
            at += len(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values)


def read_logits(path: str | Path, split: str, flag: str = "--logits") -> TeacherLogits:
    """One split's logits as stored, checked before use (_read_logits); read once per file
    version while a process runs several points (kdcli.io.shared)."""
    from kdcli.io.shared import file_identity, shared

    if not Path(path).is_file():
        return _read_logits(path, split, flag)  # the usual error
    return shared("logits", (file_identity(path), split), lambda: _read_logits(path, split, flag))


def _read_logits(path: str | Path, split: str, flag: str = "--logits") -> TeacherLogits:
    """One split's logits as stored, checked before use: Parquet page checksums, the sha256 of
    the split's contents recorded at write time, and no NaN or infinite value."""
    import pyarrow.parquet as pq

    meta = read_metadata(path, flag)
    try:
        table = pq.read_table(path, memory_map=True, filters=[("split", "=", split)],
                              page_checksum_verification=True)
    except Exception as exc:
        raise ArtifactError(f"{flag} {path}: cannot read the {split} rows, the file is damaged "
                            f"({exc}); dump the logits again (dump-logits --overwrite)") from None
    if table.num_rows == 0:
        raise ArtifactError(f"{flag} {path}: holds no {split!r} rows")
    c, k = int(meta["num_classes"]), int(meta["topk"])
    shape = (meta["positions"],) if meta.get("positions") else ()
    index = table.column("index").to_numpy()
    chunks = (meta.get("chunks") or {}).get(split)
    if k == 0:
        dense = _flat(table.column("logits")).reshape(-1, *shape, c)
        _check_content(meta, split, [index, dense.numpy()], chunks, path, flag)
        _check_finite([dense], len(index), path, split, flag)
        del table
        _release_arrow_memory()
        return TeacherLogits(index, c, dense=dense)
    values = _flat(table.column("topk_logits")).reshape(-1, *shape, k)
    ids = _flat(table.column("topk_ids")).reshape(-1, *shape, k)
    lse = _flat(table.column("lse")).float().reshape(-1, *shape)
    _check_content(meta, split, [index, values.numpy(), ids.numpy(), lse.numpy()], chunks, path, flag)
    _check_finite([values, lse], len(index), path, split, flag)
    del table
    _release_arrow_memory()
    return TeacherLogits(index, c, topk_values=values, topk_ids=ids, lse=lse)


def _release_arrow_memory() -> None:
    """Give the decoded Parquet pages back: Arrow's allocator otherwise keeps them cached
    for the life of the process (hundreds of MB for a large split)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _check_content(meta: dict, split: str, arrays: list[np.ndarray], chunks, path, flag: str) -> None:
    expected = (meta.get("content_sha256") or {}).get(split)
    covered = chunks is None or sum(chunks) == len(arrays[0])  # rows added after writing are not
    if meta["format_version"] >= 2 and (not covered or content_sha256(arrays, chunks) != expected):
        raise ArtifactError(f"{flag} {path}: the {split} rows do not match the sha256 recorded when "
                            "they were written (the file is damaged); dump the logits again "
                            "(dump-logits --overwrite)")


def _check_finite(columns: list[torch.Tensor], n: int, path, split: str, flag: str) -> None:
    """No NaN or infinite value in any of the n rows (float16 is checked as stored: no copy)."""
    bad = torch.zeros(n, dtype=torch.bool)
    for values in columns:
        bad |= ~torch.isfinite(values.reshape(n, -1)).all(1)
    if bool(bad.any()):
        raise ArtifactError(f"{flag} {path}: {int(bad.sum())} {split} rows hold NaN or infinite logits")


def dense_logits(values: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full [N, V] logits from top-k values and ids plus the full row's log-sum-exp.

    The V − K tail classes share the tail's mass, 1 − Σ softmax(top-k), equally.
    """
    k = values.shape[1]
    if k >= num_classes:
        return torch.empty(len(values), num_classes, dtype=values.dtype, device=values.device).scatter_(1, ids, values)
    top_mass = torch.exp(values - lse[:, None]).sum(1).clamp(max=1.0)
    tail_mass = (1.0 - top_mass).clamp(min=torch.finfo(torch.float32).tiny)
    tail_logit = lse + torch.log(tail_mass / (num_classes - k))
    out = tail_logit[:, None].expand(-1, num_classes).clone()
    return out.scatter_(1, ids, values)
