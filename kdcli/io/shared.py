"""Inputs read once per process while it runs several points of a sweep.

Within `sharing()` (the CLI's multi-point loop), a dataset built from the same name, arguments
and folder, a logits split and a logits file's sha256 are each made once and handed to every
point; a file is known by its real path, size, modification time and inode, so one rewritten
meanwhile is read again. Outside it (a single run) nothing is kept: a large logits split is
freed as soon as its rows are gathered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
_store: dict | None = None


@contextmanager
def sharing() -> Iterator[None]:
    global _store
    _store = {}
    try:
        yield
    finally:
        _store = None


def shared(kind: str, key: tuple, make: Callable[[], T]) -> T:
    """make(), or while sharing, the value made before for this (kind, key)."""
    if _store is None:
        return make()
    if (kind, key) not in _store:
        _store[kind, key] = make()
    return _store[kind, key]


def file_identity(path: str | os.PathLike) -> tuple:
    """What tells one version of a file from another within a process."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino
