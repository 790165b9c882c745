"""Teacher logits as Parquet: raw, temperature-free, for the train pool and the test split.

Columns (full): index int64 (sample id in the split's canonical order), split
(dictionary string: train | test), logits fixed_size_list<float16|float32>[C].
Columns (--topk K): topk_logits fixed_size_list<float>[K], topk_ids
fixed_size_list<int32>[K], lse float32 — the log-sum-exp of the full row, so
the tail's total probability at τ = 1, 1 − Σ exp(topk − lse), is known.

How a top-k file becomes teacher logits (`dense_logits`): the V − K tail classes
share the tail mass equally, i.e. each gets the logit lse + log(tail_mass / (V − K)).
At τ = 1 the teacher's top-k probabilities and tail mass are then exact; at
other τ the tail behaves as V − K equal logits. The tail mass is never dropped.

Reading goes through an Arrow memory map and flat buffers straight into tensors;
no Python work per row.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdcli.errors import ArtifactError
from kdcli.io.atomic import atomic_path
from kdcli.io.meta import decode, encode

LOGITS_FORMAT_VERSION = 2  # 2: `content_sha256` per split, Parquet page checksums
READABLE_VERSIONS = (1, 2)  # version-1 files cannot be checked: they are read as they are
ROW_GROUP_ROWS = 65536


@dataclass
class TeacherLogits:
    """One split's logits from a file, as stored: dense rows ([N, V] float16/float32) or top-k
    rows (values, ids, log-sum-exp). Rows become float32 [n, V] only for the rows asked for,
    so a top-k file of a large vocabulary is never densified for a whole split."""

    index: np.ndarray  # int64 [N]: sample ids
    num_classes: int
    dense: torch.Tensor | None = None  # [N, V] as stored
    topk_values: torch.Tensor | None = None  # [N, K]
    topk_ids: torch.Tensor | None = None  # [N, K] int64
    lse: torch.Tensor | None = None  # [N] float32

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

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Float32 logits [n, V] of file rows `positions` (top-k rows filled in as `dense_logits`)."""
        if self.dense is not None:
            return self.dense[positions].float()
        return dense_logits(self.topk_values[positions].float(), self.topk_ids[positions],
                            self.lse[positions], self.num_classes)

    def rows_for(self, ids: np.ndarray, what: str) -> torch.Tensor:
        """Float32 logits of samples `ids`, in that order (small selections only)."""
        return self.rows(self.positions_for(ids, what))


def write_logits(path: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], *,
                 metadata: dict, dtype: str = "float32", topk: int | None = None) -> None:
    """splits: name -> (index [N] int64, logits [N, C] float32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    np_dtype = {"float16": np.float16, "float32": np.float32}[dtype]
    arrow_dtype = pa.float16() if dtype == "float16" else pa.float32()
    index = np.concatenate([ix for ix, _ in splits.values()]).astype(np.int64)
    logits = np.concatenate([lg for _, lg in splits.values()]).astype(np.float32)
    names = np.concatenate([np.full(len(ix), i, dtype=np.int32) for i, (ix, _) in enumerate(splits.values())])
    columns = {
        "index": pa.array(index),
        "split": pa.DictionaryArray.from_arrays(pa.array(names), pa.array(list(splits))),
    }
    n, c = logits.shape

    def fixed(values: np.ndarray, typ, width: int):
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=typ), width)

    if topk is None:
        stored = [logits.astype(np_dtype)]
        columns["logits"] = fixed(stored[0], arrow_dtype, c)
    else:
        t = torch.from_numpy(logits)
        values, ids = t.topk(topk, dim=1)
        stored = [values.numpy().astype(np_dtype), ids.numpy().astype(np.int32),
                  torch.logsumexp(t, dim=1).numpy().astype(np.float32)]
        columns["topk_logits"] = fixed(stored[0], arrow_dtype, topk)
        columns["topk_ids"] = fixed(stored[1], pa.int32(), topk)
        columns["lse"] = pa.array(stored[2])
    bounds = np.cumsum([0] + [len(ix) for ix, _ in splits.values()])
    content = {name: content_sha256([index[a:b], *(arr[a:b] for arr in stored)])
               for name, a, b in zip(splits, bounds[:-1], bounds[1:])}
    meta = {**metadata, "format": "kdcli-logits", "format_version": LOGITS_FORMAT_VERSION,
            "num_classes": c, "dtype": dtype, "topk": topk or 0, "content_sha256": content}
    table = pa.table(columns).replace_schema_metadata(
        encode(meta))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, write_page_checksum=True)


def content_sha256(arrays: list[np.ndarray]) -> str:
    """sha256 over the bytes of a split's stored columns, in file order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def read_metadata(path: str | Path, flag: str = "--logits") -> dict:
    """The decoded schema metadata of a logits file; raises ArtifactError if it is not one."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{flag} {path}: file not found")
    try:
        raw = pq.read_schema(path).metadata or {}
    except Exception as exc:
        raise ArtifactError(f"{flag} {path}: not a readable Parquet file, it may be truncated ({exc})") from None
    decoded = decode(raw)
    if decoded.get("format") != "kdcli-logits":
        raise ArtifactError(f"{flag} {path}: not a kdcli logits file (no kdcli schema metadata)")
    if decoded.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{flag} {path}: logits format version {decoded.get('format_version')}, "
                            f"this kdcli reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    return decoded


def _flat(column) -> torch.Tensor:
    """A fixed-size-list column's values as one flat tensor, zero-copy where Arrow allows.

    The memory may be a read-only Arrow buffer; torch warns about that, but kdcli
    only ever indexes these tensors (which copies), so the warning is silenced.
    """
    values = column.combine_chunks().values.to_numpy(zero_copy_only=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values)


def read_logits(path: str | Path, split: str, flag: str = "--logits") -> TeacherLogits:
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
    index = table.column("index").to_numpy()
    if k == 0:
        dense = _flat(table.column("logits")).reshape(-1, c)
        _check_content(meta, split, [index, dense.numpy()], path, flag)
        _check_finite(dense, path, split, flag)
        return TeacherLogits(index, c, dense=dense)
    values = _flat(table.column("topk_logits")).reshape(-1, k)
    ids = _flat(table.column("topk_ids")).reshape(-1, k)
    lse = torch.from_numpy(table.column("lse").to_numpy().astype(np.float32))
    _check_content(meta, split, [index, values.numpy(), ids.numpy(), lse.numpy()], path, flag)
    _check_finite(torch.cat([values.float(), lse[:, None]], 1), path, split, flag)
    return TeacherLogits(index, c, topk_values=values, topk_ids=ids.long(), lse=lse)


def _check_content(meta: dict, split: str, arrays: list[np.ndarray], path, flag: str) -> None:
    expected = (meta.get("content_sha256") or {}).get(split)
    if meta["format_version"] >= 2 and content_sha256(arrays) != expected:
        raise ArtifactError(f"{flag} {path}: the {split} rows do not match the sha256 recorded when "
                            "they were written (the file is damaged); dump the logits again "
                            "(dump-logits --overwrite)")


def _check_finite(values: torch.Tensor, path, split: str, flag: str) -> None:
    bad = ~torch.isfinite(values).all(1)  # float16 rows are checked as stored: inf stays inf
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
