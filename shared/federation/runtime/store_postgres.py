"""The PostgreSQL store: one schema per service in a shared database, shared by its replicas.

Selected by ``PDMFED_STATE_URL=postgresql://...``. Transactions run at READ COMMITTED on pooled
connections, so replicas (and the connector's parallel handlers) commit concurrently:

- ``Transaction.lock(name)`` takes a transaction-scoped advisory lock; taken first, every read
  after it sees what the previous holder committed, which serialises a campaign's round work.
- ``mark_handled`` inserts into the inbox's primary key: a replica handling a redelivered copy
  of the same message waits for the first one's commit, then rolls back (``AlreadyHandled``).
- ``claim_outbox`` locks the oldest unclaimed row (``FOR UPDATE SKIP LOCKED``) on a connection
  held while the message is published: replicas never publish the same row at once, and the
  row of a publisher that dies is free again as soon as its session ends.

Large values are files in a blob directory every replica mounts (measured against PostgreSQL
large objects and bytea in ``bench/bench_store.py``: a 40 MB value commits in 0.05 s as a file,
0.9-2.3 s inside PostgreSQL). The schema is created and migrated at start-up under an advisory
lock, so replicas starting together migrate once; versions are rows of ``schema_version``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from federation.errors import ConfigError
from federation.runtime.blobs import BlobDirectory
from federation.runtime.store import (
    DEFAULT_INBOX_RETENTION_S,
    OutboxClaim,
    OutboxHead,
    ServiceStore,
    Transaction,
)

__all__ = ["PostgresStore", "PostgresTransaction", "SCHEMA_VERSION", "redacted", "scratch_database"]

log = logging.getLogger(__name__)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: (version, what it does, statements); a schema at version n has run steps 1..n, each once.
MIGRATIONS: list[tuple[int, str, tuple[str, ...]]] = [
    (
        1,
        "kv, inbox and outbox tables with out-of-line blob references",
        (
            'CREATE TABLE kv (key TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL, blob TEXT)',
            "CREATE TABLE inbox (msg_id BYTEA PRIMARY KEY, msg_type TEXT, at DOUBLE PRECISION)",
            "CREATE TABLE outbox (id BIGSERIAL PRIMARY KEY, msg_type TEXT NOT NULL,"
            " payload BYTEA NOT NULL, datasite_id TEXT NOT NULL, round_num INTEGER NOT NULL,"
            " blob TEXT)",
        ),
    ),
    (
        2,
        "index on the inbox's time for pruning past the replay window",
        ("CREATE INDEX inbox_at ON inbox (at)",),
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def redacted(url: str) -> str:
    """The URL without its password (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@contextmanager
def scratch_database(admin_url: str, label: str = "scratch") -> Iterator[str]:
    """A new, empty database on the server of ``admin_url`` (its URL), dropped afterwards with
    every session still attached to it (tests and benchmarks only)."""
    import psycopg

    name = f"pdmfed_{label}_{uuid.uuid4().hex[:10]}".lower()
    if not _SCHEMA_NAME.match(name):
        raise ValueError(f"invalid database label {label!r}")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresTransaction(Transaction):
    """The same statements as SQLite's, with psycopg's placeholder and advisory locks."""

    placeholder = "%s"

    def lock(self, name: str) -> None:
        # Named within the service's schema: security's and the aggregator's locks of one round
        # are different locks in the shared database.
        self._conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ':' || %s, 0))",
            (name,),
        )


class PostgresStore(ServiceStore):
    """One schema (``schema``) of a PostgreSQL database, with blob files in ``blob_dir``."""

    backend = "postgresql"
    transaction_class = PostgresTransaction
    #: Replicas share the blob directory: a file younger than this may belong to another
    #: replica's transaction that has not committed yet.
    orphan_grace_s = 600.0

    def __init__(
        self,
        url: str,
        *,
        schema: str,
        blob_dir: str | Path,
        collect_orphans: bool = False,
        inbox_retention_s: float = DEFAULT_INBOX_RETENTION_S,
        pool_size: int = 8,
        connect_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from psycopg_pool import ConnectionPool

        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"invalid PostgreSQL schema name {schema!r}")
        self.url = url
        self.schema = schema
        #: The database role it connects as (known once connected).
        self.role = urlsplit(url).username or ""
        super().__init__(
            BlobDirectory(Path(blob_dir), sync=True),
            inbox_retention_s=inbox_retention_s,
            clock=clock,
        )
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(2, pool_size),
            kwargs={
                "options": f"-c search_path={schema}",
                "application_name": f"pdmfed-{schema}",
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            },
            name=f"pdmfed-{schema}",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except Exception as exc:
            self._pool.close()
            raise ConfigError(
                f"cannot reach the state database at {redacted(url)}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            self._migrate()
            if collect_orphans:
                self.collect_orphans()
        except BaseException:
            self._pool.close()
            raise

    def _migrate(self) -> None:
        from psycopg.errors import InsufficientPrivilege

        try:
            self._migrate_as_role()
        except InsufficientPrivilege as exc:
            raise self._refused(exc.diag.message_primary or str(exc)) from exc

    def _refused(self, why: str) -> ConfigError:
        return ConfigError(
            f"the state database refuses role {self.role} on schema {self.schema}: {why} (each"
            " service connects as the role that owns its schema, from its state.env:"
            " docs/replicas.md)"
        )

    def _migrate_as_role(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            self.role = conn.info.user
            # Replicas starting together: one migrates, the others wait and find it done.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"pdmfed-migrate:{self.schema}",),
            )
            self._ensure_schema(conn)
            conn.execute(f"SET LOCAL search_path TO {self.schema}")  # created after connecting
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            current = conn.execute(
                "SELECT coalesce(max(version), 0) FROM schema_version"
            ).fetchone()[0]
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"state schema {self.schema} is at version {current}; this build knows up to"
                    f" {SCHEMA_VERSION} (upgrade pdm-federation)"
                )
            for version, description, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                    (version, description),
                )
                log.info(
                    "state schema %s migrated to version %d: %s", self.schema, version, description
                )

    def _ensure_schema(self, conn: Any) -> None:
        """Create the schema unless it exists (a service role owns its schema but may not create
        one, and CREATE SCHEMA IF NOT EXISTS checks that privilege first); refuse one the role
        cannot use."""
        exists, usable, superuser = conn.execute(
            "SELECT n.oid IS NOT NULL,"
            " n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'USAGE')"
            " AND has_schema_privilege(n.oid, 'CREATE'),"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            " FROM (SELECT %s::text AS name) wanted"
            " LEFT JOIN pg_namespace n ON n.nspname = wanted.name",
            (self.schema,),
        ).fetchone()
        if superuser:
            log.warning(
                "state schema %s: connected as a superuser, which can read and change every"
                " service's schema; give each service its own role (docs/replicas.md)",
                self.schema,
            )
        if not exists:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        elif not usable:
            raise self._refused("permission denied to use and create in it")

    @property
    def schema_version(self) -> int:
        return int(self._query("SELECT coalesce(max(version), 0) FROM schema_version")[0][0])

    def _begin(self) -> Any:
        return self._pool.getconn()  # psycopg opens the transaction with the first statement

    def _commit(self, conn: Any) -> None:
        conn.commit()

    def _rollback(self, conn: Any) -> None:
        conn.rollback()

    def _end(self, conn: Any) -> None:
        self._pool.putconn(conn)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._pool.connection() as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description is not None else []

    def claim_outbox(self) -> OutboxClaim | None:
        conn = self._pool.getconn()
        try:
            row = conn.execute(
                "SELECT id, msg_type, datasite_id, round_num FROM outbox"
                " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
        except BaseException:
            conn.rollback()
            self._pool.putconn(conn)
            raise
        if row is None:
            conn.rollback()
            self._pool.putconn(conn)
            return None
        head = OutboxHead(*row)

        def done() -> None:
            try:
                gone = conn.execute(
                    "DELETE FROM outbox WHERE id = %s RETURNING blob", (head.id,)
                ).fetchone()
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                self._pool.putconn(conn)
            self._outbox_gone(head.id, None if gone is None else gone[0])

        def release() -> None:
            try:
                conn.rollback()
            finally:
                self._pool.putconn(conn)

        return OutboxClaim(head, done, release)

    def drop_schema(self) -> None:
        """Remove this service's schema and everything in it (tests and teardown only)."""
        with self._pool.connection() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def _close(self) -> None:
        self._pool.close()
