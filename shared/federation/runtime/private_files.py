"""Files and directories only their owner may read: service state, model deltas, keys (0600/0700)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_dir", "private_file", "open_private"]

_FILE, _DIR = 0o600, 0o700


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) if missing; make it 0700 even if it existed."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):  # the parents it creates are private too
        directory.mkdir(mode=_DIR, exist_ok=True)
        directory.chmod(_DIR)
    path.chmod(_DIR)
    return path


def private_file(path: str | Path) -> Path:
    """Create ``path`` empty if missing; make it 0600 even if it existed (SQLite gives its
    -wal and -shm files the database file's mode)."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, _FILE))
    path.chmod(_FILE)
    return path


def open_private(path: str | Path, mode: str = "wb"):  # noqa: ANN201 - a binary file object
    """Open ``path`` for writing, created (or truncated) with mode 0600 from the start."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(path, flags, _FILE), mode)
