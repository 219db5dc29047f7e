"""The SQLite store: one file per service (the embedded default, the demo, single instances).

Transactions are serial (``BEGIN IMMEDIATE`` under one in-process lock), so a named lock is a
no-op here. One process owns the file: SQLite's locking is not safe on network volumes, so
replicas use the PostgreSQL store instead. Schema versions live in ``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from federation.errors import ConfigError
from federation.runtime.blobs import BlobDirectory
from federation.runtime.private_files import private_dir, private_file
from federation.runtime.store import (
    DEFAULT_INBOX_RETENTION_S,
    OutboxClaim,
    OutboxHead,
    ServiceStore,
)

__all__ = ["SqliteStore", "SCHEMA_VERSION"]


def _ensure_blob_columns(conn: sqlite3.Connection) -> None:
    # Stores made before big values moved to files have no blob column.
    for table in ("kv", "outbox"):
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if "blob" not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN blob TEXT")


def _v1_tables(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, blob TEXT)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS inbox (msg_id BLOB PRIMARY KEY, msg_type TEXT, at REAL)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " msg_type TEXT NOT NULL, payload BLOB NOT NULL, datasite_id TEXT NOT NULL,"
        " round_num INTEGER NOT NULL, blob TEXT)"
    )
    _ensure_blob_columns(conn)  # tables that existed before versioning


def _v2_inbox_index(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE INDEX IF NOT EXISTS inbox_at ON inbox (at)")


#: (version, what it does, step); a store at version n has run steps 1..n, each once.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "kv, inbox and outbox tables with out-of-line blob references", _v1_tables),
    (2, "index on the inbox's time for pruning past the replay window", _v2_inbox_index),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SqliteStore(ServiceStore):
    """One SQLite file per service (':memory:' for tests and the embedded demo)."""

    backend = "sqlite"

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        collect_orphans: bool = False,
        inbox_retention_s: float = DEFAULT_INBOX_RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create and migrate) the store; the owning service passes
        ``collect_orphans=True`` to remove blob files a crash left unreferenced (never a reader:
        it would race the owner)."""
        self.path = str(path)
        on_disk = self.path != ":memory:"
        if on_disk:  # model deltas and campaign state: the service's user only
            private_dir(Path(self.path).parent)
            private_file(self.path)
            for leftover in (self.path + "-wal", self.path + "-shm"):  # of an earlier run
                if Path(leftover).exists():
                    private_file(leftover)
        blobs = BlobDirectory(Path(self.path + ".blobs") if on_disk else None, sync=on_disk)
        super().__init__(blobs, inbox_retention_s=inbox_retention_s, clock=clock)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL" if on_disk else "PRAGMA journal_mode=MEMORY")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._lock = threading.RLock()
        self._claimed: set[int] = set()
        self._migrate()
        if collect_orphans:
            self.collect_orphans()

    def _migrate(self) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                current = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
                if current > SCHEMA_VERSION:
                    raise ConfigError(
                        f"state file {self.path} has schema version {current}; this build knows"
                        f" up to {SCHEMA_VERSION} (upgrade pdm-federation)"
                    )
                for version, _, step in MIGRATIONS:
                    if version > current:
                        step(self._conn)
                        self._conn.execute(f"PRAGMA user_version = {int(version)}")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    def _begin(self) -> Any:
        self._lock.acquire()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        conn.execute("ROLLBACK")

    def _end(self, conn: Any) -> None:
        self._lock.release()

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def claim_outbox(self) -> OutboxClaim | None:
        # One process owns the file: a claim only has to keep this process's publishers apart.
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, msg_type, datasite_id, round_num FROM outbox ORDER BY id LIMIT ?",
                (len(self._claimed) + 1,),
            ).fetchall()
            head = next((OutboxHead(*r) for r in rows if r[0] not in self._claimed), None)
            if head is None:
                return None
            self._claimed.add(head.id)

        def done() -> None:
            try:
                self.outbox_done(head.id)
            finally:
                self._claimed.discard(head.id)

        return OutboxClaim(head, done, lambda: self._claimed.discard(head.id))

    def _close(self) -> None:
        with self._lock:
            self._conn.close()
