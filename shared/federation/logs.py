"""Logging setup: one line per event, never a secret or a payload; third-party output to a file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["setup_logging", "divert_output"]


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once (idempotent)."""
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aio_pika", "aiormq", "syft", "urllib3", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def divert_output(log_path: Path | None) -> Iterator[TextIO]:
    """Send everything written to stdout and stderr into ``log_path``; yield the real stderr.

    The diversion is at the file-descriptor level, so it catches what libraries print
    (uvicorn, PySyft banners, tqdm bars, warnings, logging) and what child processes forked
    meanwhile write. The yielded stream is the terminal (or pipe) the user sees; what the
    command means to show goes there. ``log_path=None`` diverts nothing (``--verbose``).
    """
    if log_path is None:
        yield sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    user = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield user
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        user.close()
