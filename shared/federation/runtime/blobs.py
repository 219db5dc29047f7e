"""Large encoded values as write-once files named by a random id (or in a dict for tests).

A store keeps values and outbox payloads of ``BLOB_MIN_BYTES`` or more here instead of in its
database rows: SQLite would write such a value twice (WAL, then checkpoint) and walk thousands of
overflow pages to delete it; PostgreSQL takes 0.9-2.3 s to commit a 40 MB bytea or large object
where a file takes 0.05 s (``bench/bench_store.py``). A file is written, fsynced and renamed into
place before the transaction that references it commits, and unlinked after the one that drops
it, on a background thread (a 40 MB file takes ~13 ms to free, which no lock need wait for).
Files are never modified in place, so replicas may share the directory over a network volume.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from federation.runtime.private_files import open_private, private_dir
from federation.wire.codec import PayloadParts, decode_payload

__all__ = ["BlobDirectory", "read_whole"]

log = logging.getLogger(__name__)


def read_whole(f: Any, size: int | None = None) -> memoryview:
    """The ``size`` bytes (default: all) of an open file as one writable buffer.

    An uninitialised numpy buffer, not ``bytearray(size)``: that zero-fills first, 34 ms for
    40 MB against 9 ms. OSError when the file holds fewer bytes (it shrank while read).
    """
    if size is None:
        size = os.fstat(f.fileno()).st_size
    buf = memoryview(np.empty(size, dtype=np.uint8))
    got = f.readinto(buf)
    if got != size:
        raise OSError(f"{getattr(f, 'name', 'file')} ended after {got} of {size} bytes")
    return buf


class BlobDirectory:
    """Big encoded values as files in ``directory`` (a dict when ``directory`` is None)."""

    def __init__(self, directory: Path | None, sync: bool) -> None:
        self.directory = directory
        self.sync = sync
        self._memory: dict[str, bytes] = {}
        self._unlinks: queue.Queue[Path | None] = queue.Queue()  # None stops the thread
        self._unlinker: threading.Thread | None = None
        self._unlinker_lock = threading.Lock()
        if directory is not None:
            private_dir(directory)

    def write(self, parts: PayloadParts) -> str:
        """Store the parts durably (fsynced when ``sync``); return the reference."""
        ref = uuid.uuid4().hex
        if self.directory is None:
            self._memory[ref] = parts.tobytes()
            return ref
        final = self.directory / ref
        tmp = final.with_suffix(".tmp")
        with open_private(tmp) as f:
            f.writelines(parts.parts)  # no joined copy of the payload
            f.flush()
            if self.sync:
                os.fsync(f.fileno())
        os.replace(tmp, final)
        if self.sync:
            self._sync_directory()
        return ref

    def link(self, source: Path) -> str:
        """Add an existing file by a hard link (no bytes copied; durable when ``sync``); the
        new reference. FileNotFoundError when ``source`` is gone."""
        if self.directory is None:
            raise ValueError("an in-memory blob directory cannot link files")
        ref = uuid.uuid4().hex
        os.link(source, self.directory / ref)
        if self.sync:
            self._sync_directory()
        return ref

    def read(self, ref: str) -> bytes | memoryview:
        """The stored bytes (a writable buffer for files: decoded tensors can alias it)."""
        if self.directory is None:
            return self._memory[ref]
        with open(self.directory / ref, "rb") as f:
            return read_whole(f)

    def load(self, value: bytes, ref: str | None) -> Any:
        """Decode a stored value: inline bytes, or the blob ``ref`` names."""
        return decode_payload(self.read(ref) if ref is not None else bytes(value))

    def remove(self, refs: list[str]) -> None:
        """Forget these references (dropped by a committed transaction, or never committed);
        their files are unlinked on the background thread."""
        if self.directory is None:
            for ref in refs:
                self._memory.pop(ref, None)
            return
        if not refs:
            return
        self._start_unlinker()
        for ref in refs:
            self._unlinks.put(self.directory / ref)

    def settle(self) -> None:
        """Wait until every file handed to ``remove`` is gone."""
        if self._unlinker is not None:
            self._unlinks.join()

    def stop(self) -> None:
        """Unlink what is pending, then end the background thread."""
        with self._unlinker_lock:
            thread, self._unlinker = self._unlinker, None
        if thread is not None:
            self._unlinks.put(None)
            thread.join()

    def _start_unlinker(self) -> None:
        with self._unlinker_lock:
            if self._unlinker is None:
                self._unlinker = threading.Thread(
                    target=self._unlink_forever, name="pdmfed-blob-unlink", daemon=True
                )
                self._unlinker.start()

    def _unlink_forever(self) -> None:
        # A file left by an exit before its turn is an orphan: the owner collects it at start.
        while True:
            path = self._unlinks.get()
            try:
                if path is None:
                    return
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning(
                    "could not unlink %s (%s); it is collected at the next start", path, exc
                )
            finally:
                self._unlinks.task_done()

    def collect(self, live: set[str], *, older_than_s: float = 0.0) -> int:
        """Remove every stored blob not in ``live`` (left by a crash), now; return how many.

        ``older_than_s`` spares files younger than that: where replicas share the directory,
        another one may have written a file whose transaction has not committed yet.
        """
        if self.directory is None:
            dead = [n for n in self._memory if n not in live]
            self.remove(dead)
            return len(dead)
        cutoff = time.time() - older_than_s
        removed = 0
        for path in list(self.directory.iterdir()):
            if path.name in live:
                continue
            try:
                if older_than_s > 0 and path.stat().st_mtime > cutoff:
                    continue
                path.unlink(missing_ok=True)
                removed += 1
            except FileNotFoundError:  # another replica collected it first
                continue
        return removed

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
