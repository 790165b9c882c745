"""Atomic writes: write to a temporary name beside the target, then os.replace.

A reader (or a later stage of a slurm array) therefore sees either the old file
or the complete new one, never a half-written file. Temporary names are short
(`.kdcli-XXXXXXXX.tmp`) so they fit beside any legal final name, and a later run in
the same folder removes the ones a killed process left (`clear_temporaries`).

Test hook: KDCLI_FAULT=WHEN:NAME[@N] kills the process (SIGKILL) at the N-th (default
first) write of a file called NAME, WHEN being `before` (the temporary file is
complete, not yet in place) or `after` (in place). Fault tests use it to stop a stage
at a named write deterministically.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdcli.errors import ArtifactError

TEMP_PREFIX, TEMP_SUFFIX = ".kdcli-", ".tmp"
_writes: dict[tuple[str, str], int] = {}


LEGACY_TEMP_PREFIXES = tuple(f".{name}." for name in (
    "run.json", "model.safetensors", "metrics.parquet", "subset.parquet", "checkpoint.safetensors",
    "checkpoint.json"))  # kdcli 0.1 named its temporary files after their target


def is_temporary(name: str) -> bool:
    """A temporary file of kdcli's atomic writes (`.kdcli-XXXXXXXX.tmp`, or 0.1's `.NAME.XXXX.tmp`
    for a run-dir file NAME); other tools' hidden files are not."""
    return name.endswith(TEMP_SUFFIX) and name.startswith((TEMP_PREFIX, *LEGACY_TEMP_PREFIXES))


def clear_temporaries(folder: str | os.PathLike) -> None:
    """Remove what killed writers left in `folder`: temporary files only."""
    for p in Path(folder).iterdir():
        if is_temporary(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _fault(when: str, path: Path) -> None:
    spec = os.environ.get("KDCLI_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != f"{when}:{path.name}":
        return
    key = (when, path.name)
    _writes[key] = _writes.get(key, 0) + 1
    if _writes[key] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; move it into place on success.

    The file gets the usual mode (0666 less the umask), and a failed write (a full disk, a
    read-only folder) raises ArtifactError naming the target.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        # after the body: a writer may have replaced the file (safetensors makes it 0600)
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fault("before", path)
        os.replace(tmp_path, path)
        _fault("after", path)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot write ({exc.strerror or exc}); check the free space "
                            "and permissions there") from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
