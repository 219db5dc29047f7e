"""Durable service state: key-value, inbox (processed msg ids) and outbox in one SQLite file.

A handler's state change, the id of the message it handled and the messages it will publish
are committed in ONE transaction; the broker message is acked only after that commit, and the
outbox is flushed after it (and again at start-up). So a service killed at any point loses
nothing and applies nothing twice: a redelivered message finds its id in the inbox.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.wire.codec import decode_payload, encode_payload

__all__ = ["ServiceStore", "Transaction", "OutboxItem"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (msg_id BLOB PRIMARY KEY, msg_type TEXT, at REAL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    datasite_id TEXT NOT NULL,
    round_num INTEGER NOT NULL
);
"""


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

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, key: str, default: Any = None) -> Any:
        """Read a value (decoded with the tensor-aware codec)."""
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else decode_payload(bytes(row[0]))

    def has(self, key: str) -> bool:
        """Whether a key exists, without decoding its value (cheap for big tensors)."""
        return self._conn.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, value: Any) -> None:
        """Write a value (encoded with the tensor-aware codec, never pickle)."""
        self._conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, encode_payload(value)),
        )

    def delete(self, key: str) -> None:
        """Remove a value if present."""
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
        self._conn.execute(
            "INSERT INTO outbox (msg_type, payload, datasite_id, round_num) VALUES (?, ?, ?, ?)",
            (str(msg_type), encode_payload(payload), datasite_id, int(round_num)),
        )


class ServiceStore:
    """One SQLite file per service (':memory:' for tests and the embedded demo)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL" if self.path != ":memory:" else "PRAGMA journal_mode=MEMORY")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Everything inside commits together or not at all."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def read(self, key: str, default: Any = None) -> Any:
        """Read one value outside a handler."""
        with self.transaction() as tx:
            return tx.get(key, default)

    def pending_outbox(self, limit: int = 100) -> list[OutboxItem]:
        """Messages committed but not yet confirmed published, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, msg_type, payload, datasite_id, round_num FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxItem(r[0], r[1], decode_payload(bytes(r[2])), r[3], r[4]) for r in rows]

    def outbox_done(self, item_id: int) -> None:
        """Forget an outbox message once the broker confirmed it."""
        with self._lock:
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()
