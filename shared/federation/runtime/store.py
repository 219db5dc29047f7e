"""Durable service state: key-value, inbox (processed msg ids) and outbox in one SQLite file.

A handler's state change, the id of the message it handled and the messages it will publish
are committed in ONE transaction; the broker message is acked only after that commit, and the
outbox is flushed after it (and again at start-up). So a service killed at any point loses
nothing and applies nothing twice: a redelivered message finds its id in the inbox.

Values and outbox payloads of ``BLOB_MIN_BYTES`` or more (model updates) live in files beside
the database, written and fsynced before the transaction that references them commits and
unlinked after the one that drops them: SQLite would write such a value twice (WAL, then
checkpoint) and walk thousands of overflow pages to delete it. Unlinking happens on a
background thread (a 40 MB file takes ~13 ms to free, which the store's lock need not wait
for). Files no row references (a crash between the steps) are removed when the store opens.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.wire.codec import PayloadParts, decode_payload, encode_payload_parts

__all__ = ["ServiceStore", "Transaction", "OutboxHead", "OutboxItem", "BLOB_MIN_BYTES"]

log = logging.getLogger(__name__)

#: Encoded values at least this big are kept in a file beside the database.
BLOB_MIN_BYTES = 256 * 1024
#: Payloads just committed to the outbox are also kept in memory, up to this many bytes, so
#: the flush right after the commit publishes them without reading them back.
EMITTED_CACHE_BYTES = 512 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, blob TEXT);
CREATE TABLE IF NOT EXISTS inbox (msg_id BLOB PRIMARY KEY, msg_type TEXT, at REAL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    datasite_id TEXT NOT NULL,
    round_num INTEGER NOT NULL,
    blob TEXT
);
"""


class _Blobs:
    """Big encoded values as files named by a random id (or in a dict for ':memory:' stores)."""

    def __init__(self, directory: Path | None, sync: bool) -> None:
        self.directory = directory
        self.sync = sync
        self._memory: dict[str, bytes] = {}
        self._unlinks: queue.Queue[Path | None] = queue.Queue()  # None stops the thread
        self._unlinker: threading.Thread | None = None
        self._unlinker_lock = threading.Lock()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def write(self, parts: PayloadParts) -> str:
        """Store the parts durably (fsynced when ``sync``); return the reference."""
        ref = uuid.uuid4().hex
        if self.directory is None:
            self._memory[ref] = parts.tobytes()
            return ref
        final = self.directory / ref
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.writelines(parts.parts)  # no joined copy of the payload
            f.flush()
            if self.sync:
                os.fsync(f.fileno())
        os.replace(tmp, final)
        if self.sync:
            self._sync_directory()
        return ref

    def read(self, ref: str) -> bytes | bytearray:
        """The stored bytes (a writable buffer for files: decoded tensors can alias it)."""
        if self.directory is None:
            return self._memory[ref]
        path = self.directory / ref
        with open(path, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(buf)
        return buf

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
                log.warning("could not unlink %s (%s); it is collected at the next start", path, exc)
            finally:
                self._unlinks.task_done()

    def collect(self, live: set[str]) -> int:
        """Remove every stored blob not in ``live`` (left by a crash), now; return how many."""
        if self.directory is None:
            dead = [n for n in self._memory if n not in live]
            self.remove(dead)
            return len(dead)
        dead = [p.name for p in self.directory.iterdir() if p.name not in live]
        for name in dead:
            (self.directory / name).unlink(missing_ok=True)
        return len(dead)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class OutboxHead:
    """An outbox message without its payload."""

    id: int
    msg_type: str
    datasite_id: str
    round_num: int


@dataclass(frozen=True)
class OutboxItem:
    """A message committed for publishing."""

    id: int
    msg_type: str
    payload: dict
    datasite_id: str
    round_num: int


class Transaction:
    """What a handler may do inside one atomic commit."""

    def __init__(self, conn: sqlite3.Connection, blobs: _Blobs) -> None:
        self._conn = conn
        self._blobs = blobs
        self.created: list[str] = []  # blobs written here: removed if the transaction rolls back
        self.dropped: list[str] = []  # blobs no longer referenced: removed once it commits
        self.emitted: list[tuple[int, dict, int]] = []  # (outbox id, payload, encoded size)

    def _encode(self, value: Any) -> tuple[bytes, str | None, int]:
        """(inline bytes, blob reference, encoded size): big values go to a blob file."""
        parts = encode_payload_parts(value)
        if parts.nbytes < BLOB_MIN_BYTES:
            return parts.tobytes(), None, parts.nbytes
        ref = self._blobs.write(parts)
        self.created.append(ref)
        return b"", ref, parts.nbytes

    def _drop_blob_of(self, key: str) -> None:
        row = self._conn.execute("SELECT blob FROM kv WHERE key = ?", (key,)).fetchone()
        if row is not None and row[0] is not None:
            self.dropped.append(row[0])

    def get(self, key: str, default: Any = None) -> Any:
        """Read a value (decoded with the tensor-aware codec)."""
        row = self._conn.execute("SELECT value, blob FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else self._blobs.load(row[0], row[1])

    def has(self, key: str) -> bool:
        """Whether a key exists, without decoding its value (cheap for big tensors)."""
        return self._conn.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, value: Any) -> None:
        """Write a value (encoded with the tensor-aware codec, never pickle)."""
        encoded, ref, _ = self._encode(value)
        self._drop_blob_of(key)
        self._conn.execute(
            "INSERT INTO kv (key, value, blob) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, blob = excluded.blob",
            (key, encoded, ref),
        )

    def delete(self, key: str) -> None:
        """Remove a value if present."""
        self._drop_blob_of(key)
        self._conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def keys(self, prefix: str) -> list[str]:
        """Keys starting with prefix, sorted."""
        rows = self._conn.execute(
            "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + "\uffff"),
        ).fetchall()
        return [r[0] for r in rows]

    def seen(self, msg_id: bytes) -> bool:
        """Whether a message with this id was already handled."""
        row = self._conn.execute("SELECT 1 FROM inbox WHERE msg_id = ?", (msg_id,)).fetchone()
        return row is not None

    def mark_handled(self, msg_id: bytes, msg_type: str) -> None:
        """Record that this message's effect is part of this transaction."""
        self._conn.execute(
            "INSERT OR IGNORE INTO inbox (msg_id, msg_type, at) VALUES (?, ?, ?)",
            (msg_id, msg_type, time.time()),
        )

    def emit(self, msg_type: str, payload: dict, *, datasite_id: str = "", round_num: int = 0) -> None:
        """Queue a message to publish once this transaction commits."""
        encoded, ref, nbytes = self._encode(payload)
        cursor = self._conn.execute(
            "INSERT INTO outbox (msg_type, payload, datasite_id, round_num, blob)"
            " VALUES (?, ?, ?, ?, ?)",
            (str(msg_type), encoded, datasite_id, int(round_num), ref),
        )
        self.emitted.append((int(cursor.lastrowid), payload, nbytes))


class ServiceStore:
    """One SQLite file per service (':memory:' for tests and the embedded demo)."""

    def __init__(self, path: str | Path = ":memory:", *, collect_orphans: bool = False) -> None:
        """Open (or create) the store; the owning service passes ``collect_orphans=True`` to
        remove blob files a crash left unreferenced (never a reader: it would race the owner)."""
        self.path = str(path)
        on_disk = self.path != ":memory:"
        if on_disk:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL" if on_disk else "PRAGMA journal_mode=MEMORY")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        for table in ("kv", "outbox"):  # stores made before big values moved to files
            columns = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if "blob" not in columns:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN blob TEXT")
        self._blobs = _Blobs(Path(self.path + ".blobs") if on_disk else None, sync=on_disk)
        self._lock = threading.RLock()
        self._emitted: dict[int, tuple[dict, int]] = {}
        self._emitted_bytes = 0
        if collect_orphans:
            self.collect_orphans()

    def collect_orphans(self) -> int:
        """Remove blob files no row references (left by a crash mid-commit); return how many."""
        with self._lock:
            live = {
                r[0]
                for r in self._conn.execute(
                    "SELECT blob FROM kv WHERE blob IS NOT NULL"
                    " UNION SELECT blob FROM outbox WHERE blob IS NOT NULL"
                )
            }
            return self._blobs.collect(live)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Everything inside commits together or not at all."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            tx = Transaction(self._conn, self._blobs)
            try:
                yield tx
            except BaseException:
                self._conn.execute("ROLLBACK")
                self._blobs.remove(tx.created)
                raise
            else:
                self._conn.execute("COMMIT")
                self._blobs.remove(tx.dropped)
                for item_id, payload, nbytes in tx.emitted:
                    if self._emitted_bytes + nbytes <= EMITTED_CACHE_BYTES:
                        self._emitted[item_id] = (payload, nbytes)
                        self._emitted_bytes += nbytes

    def read(self, key: str, default: Any = None) -> Any:
        """Read one value outside a handler."""
        with self.transaction() as tx:
            return tx.get(key, default)

    def pending_outbox_heads(self, limit: int = 100) -> list[OutboxHead]:
        """Messages committed but not yet confirmed published, oldest first, without payloads."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, msg_type, datasite_id, round_num FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxHead(*r) for r in rows]

    def cached_outbox_payload(self, item_id: int) -> dict | None:
        """The payload of a message this process committed, if still in memory (no I/O).

        No lock: the event loop calls this, and one dict lookup is atomic, whereas the store's
        lock may be held by a commit writing a large blob in another thread.
        """
        hit = self._emitted.get(item_id)
        return None if hit is None else hit[0]

    def outbox_payload(self, item_id: int) -> dict:
        """The payload of one pending outbox message (from memory when possible)."""
        cached = self.cached_outbox_payload(item_id)
        if cached is not None:
            return cached
        with self._lock:
            row = self._conn.execute(
                "SELECT payload, blob FROM outbox WHERE id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no outbox message {item_id}")
            return self._blobs.load(row[0], row[1])

    def pending_outbox(self, limit: int = 100) -> list[OutboxItem]:
        """Messages committed but not yet confirmed published, oldest first."""
        return [
            OutboxItem(h.id, h.msg_type, self.outbox_payload(h.id), h.datasite_id, h.round_num)
            for h in self.pending_outbox_heads(limit)
        ]

    def outbox_done(self, item_id: int) -> None:
        """Forget an outbox message once the broker confirmed it."""
        with self._lock:
            row = self._conn.execute("SELECT blob FROM outbox WHERE id = ?", (item_id,)).fetchone()
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            if row is not None and row[0] is not None:
                self._blobs.remove([row[0]])
            cached = self._emitted.pop(item_id, None)
            if cached is not None:
                self._emitted_bytes -= cached[1]

    def settle(self) -> None:
        """Wait until the files of values dropped by committed transactions are unlinked."""
        self._blobs.settle()

    def close(self) -> None:
        """Close the database (after the pending unlinks)."""
        self._blobs.stop()
        with self._lock:
            self._conn.close()
