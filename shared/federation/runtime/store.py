"""Durable service state behind one interface: key-value, inbox and outbox committed together.

A handler's state change, the id of the message it handled and the messages it will publish
are committed in ONE transaction; the broker message is acked only after that commit, and the
outbox is flushed after it (and again at start-up). So a service killed at any point loses
nothing and applies nothing twice: a redelivered message finds its id in the inbox.

Two backends with the same guarantees: SQLite (:mod:`~federation.runtime.store_sqlite`, one
file per service: the embedded default, the demo and single-instance deployments) and PostgreSQL
(:mod:`~federation.runtime.store_postgres`, one schema per service in a shared database, which
replicas of a service share), chosen by ``PDMFED_STATE_URL`` (:func:`open_store`). Values and
outbox payloads of ``BLOB_MIN_BYTES`` or more live out of line in a blob directory
(:mod:`~federation.runtime.blobs`). Each backend creates and migrates its schema when it opens
(versioned; idempotent; refuses a schema newer than it knows).

Inbox rows are pruned once older than ``inbox_retention_s`` (the replay window plus the clock
skew a timestamp may be ahead): a copy of such a message is refused as expired by the replay
guard before any handler sees it, so the inbox only needs to cover the window.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from federation.errors import ConfigError
from federation.runtime.blobs import BlobDirectory
from federation.wire.codec import PayloadParts, encode_payload_parts

log = logging.getLogger(__name__)

__all__ = [
    "ServiceStore",
    "Transaction",
    "OutboxHead",
    "OutboxItem",
    "OutboxClaim",
    "AlreadyHandled",
    "BLOB_MIN_BYTES",
    "DEFAULT_INBOX_RETENTION_S",
    "PRUNE_INTERVAL_S",
    "open_store",
]

#: Encoded values at least this big are kept in a file beside the database.
BLOB_MIN_BYTES = 256 * 1024
#: Payloads just committed to the outbox are also kept in memory, up to this many bytes, so
#: the flush right after the commit publishes them without reading them back.
EMITTED_CACHE_BYTES = 512 * 1024 * 1024
#: Inbox retention when none is given: the default replay window (600 s queue TTL + 30 s skew)
#: plus the 30 s a timestamp may be ahead of the receiver's clock.
DEFAULT_INBOX_RETENTION_S = 660.0
#: A store prunes its inbox after a commit at most this often.
PRUNE_INTERVAL_S = 60.0
#: Highest key character for prefix ranges (keys are compared bytewise in both backends).
_KEY_MAX = chr(0x10FFFF)
#: A kv row's ``blob`` column starting with this names a kept claim body (runtime.claims), not
#: a blob file: the value's pinned fields are that body's.
PIN_PREFIX = "pin:"
#: The key of a pinned value's pin (``KeptBody.to_record``) in its stored form.
_PIN_KEY = "__kept_body__"


class AlreadyHandled(Exception):
    """``mark_handled`` found the message id committed by another transaction: roll back."""


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


@dataclass
class OutboxClaim:
    """One outbox message reserved for this publisher until ``done`` or ``release``.

    While claimed, no other publisher sharing the store (a replica) takes it; if this process
    dies, the claim ends with its database session and another publisher takes the message.
    """

    head: OutboxHead
    _done: Callable[[], None] = field(repr=False)
    _release: Callable[[], None] = field(repr=False)

    def done(self) -> None:
        """The broker confirmed it: forget the message."""
        self._done()

    def release(self) -> None:
        """Publishing failed: leave the message for the next flush."""
        self._release()


class Transaction:
    """What a handler may do inside one atomic commit (SQL written with ``?`` placeholders)."""

    #: The driver's placeholder; SQL below is written with ``?``.
    placeholder: ClassVar[str] = "?"

    def __init__(self, conn: Any, blobs: BlobDirectory, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._blobs = blobs
        self._clock = clock
        self.created: list[str] = []  # blobs written here: removed if the transaction rolls back
        self.dropped: list[str] = []  # blobs no longer referenced: removed once it commits
        self.emitted: list[tuple[int, dict, int]] = []  # (outbox id, payload, encoded size)
        #: The claim-check store (runtime.claims) when one is configured, else None.
        self.claims: Any = None
        self.claimed: list[Any] = []  # claim bodies written here: removed if it rolls back
        #: (msg_type, original payload) of the messages queued as claim-check references.
        self.referenced: list[tuple[str, dict]] = []
        #: Emits waiting for their claim bodies (sealed and written in parallel), in order.
        self._deferred: list[tuple[str, Any, dict, str, int]] = []
        #: Kept bodies no value pins once this transaction commits (their fields leave memory).
        self.unpinned: list[str] = []

    def _x(self, sql: str, params: tuple = ()) -> Any:
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        return self._conn.execute(sql, params)

    def _encode(self, value: Any) -> tuple[bytes, str | None, int]:
        """(inline bytes, blob reference, encoded size): big values go to a blob file."""
        return self._keep(encode_payload_parts(value))

    def _keep(self, parts: PayloadParts) -> tuple[bytes, str | None, int]:
        if parts.nbytes < BLOB_MIN_BYTES:
            return parts.tobytes(), None, parts.nbytes
        ref = self._blobs.write(parts)
        self.created.append(ref)
        return b"", ref, parts.nbytes

    def _drop_blob_of(self, key: str) -> None:
        row = self._x("SELECT blob FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] is None:
            return
        if row[0].startswith(PIN_PREFIX):  # the body itself stays until the claim collection
            self.unpinned.append(row[0][len(PIN_PREFIX) :])
        else:
            self.dropped.append(row[0])

    def lock(self, name: str) -> None:
        """Hold an exclusive lock named ``name`` until this transaction ends (take it first).

        Serialises work that must meet (a campaign's round) across replicas sharing the store;
        a backend whose transactions are already serial makes this a no-op.
        """

    def get(self, key: str, default: Any = None) -> Any:
        """Read a value (decoded with the tensor-aware codec; a pinned value's fields from the
        body it keeps)."""
        row = self._x("SELECT value, blob FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        if row[1] is not None and row[1].startswith(PIN_PREFIX):
            from federation.runtime.claims import KeptBody

            value = self._blobs.load(row[0], None)
            kept = KeptBody.from_record(value.pop(_PIN_KEY))
            if self.claims is None:
                raise ConfigError(f"{key} keeps a claim body, and no claim store is configured")
            return {**value, **self.claims.recall(kept)}
        return self._blobs.load(row[0], row[1])

    def has(self, key: str) -> bool:
        """Whether a key exists, without decoding its value (cheap for big tensors)."""
        return self._x("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, value: Any, *, kept: Any = None) -> None:
        """Write a value (encoded with the tensor-aware codec, never pickle). ``kept``: the
        :class:`~federation.runtime.claims.KeptBody` from ``keep_received`` whose fields
        ``value`` holds unchanged: those are not written again, the row pins the body."""
        if kept is not None and all(value.get(f) is not None for f in kept.fields):
            if _PIN_KEY in value:
                raise ValueError(f"{_PIN_KEY} is reserved")
            rest = {k: v for k, v in value.items() if k not in kept.fields}
            encoded = encode_payload_parts({**rest, _PIN_KEY: kept.to_record()}).tobytes()
            ref = PIN_PREFIX + kept.ref.name
        else:
            encoded, ref, _ = self._encode(value)
        self._drop_blob_of(key)
        self._x(
            "INSERT INTO kv (key, value, blob) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, blob = excluded.blob",
            (key, encoded, ref),
        )

    def keep_received(self, envelope: Any, fields: dict[str, Any]) -> Any:
        """Keep the claim body ``envelope``'s message arrived in (a hard link in this service's
        folder, removed if this transaction rolls back) as the stored form of ``fields``, its
        decoded fields, held in memory meanwhile; the ``KeptBody`` to ``put`` the value with.
        None when it did not arrive by reference, there is no claim store or the body is gone:
        ``put`` then writes the fields itself."""
        claim = getattr(envelope, "claim", None)
        if claim is None or self.claims is None:
            return None
        from federation.runtime.claims import KeptBody
        from federation.wire.contracts import forwarded_type

        ref = self.claims.keep(claim)
        if ref is None:
            return None
        self.claimed.append(ref)
        source = forwarded_type(envelope.msg_type)
        msg_types = (envelope.msg_type,) + (() if source is None else (source.value,))
        kept = KeptBody(ref, tuple(fields), msg_types, envelope.datasite_id, envelope.round_num)
        self.claims.remember(ref.name, dict(fields))
        return kept

    def delete(self, key: str) -> None:
        """Remove a value if present."""
        self._drop_blob_of(key)
        self._x("DELETE FROM kv WHERE key = ?", (key,))

    def keys(self, prefix: str) -> list[str]:
        """Keys starting with prefix, sorted."""
        rows = self._x(
            "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + _KEY_MAX),
        ).fetchall()
        return [r[0] for r in rows]

    def seen(self, msg_id: bytes) -> bool:
        """Whether a message with this id was already handled."""
        return (
            self._x("SELECT 1 FROM inbox WHERE msg_id = ?", (bytes(msg_id),)).fetchone() is not None
        )

    def mark_handled(self, msg_id: bytes, msg_type: str) -> None:
        """Record that this message's effect is part of this transaction.

        Raises AlreadyHandled when another transaction committed the same id (a replica that
        handled a redelivered copy): this one must then roll back, or the effect would count twice.
        Where replicas may race, call it first: the second one waits for the first to commit.
        """
        cursor = self._x(
            "INSERT INTO inbox (msg_id, msg_type, at) VALUES (?, ?, ?) ON CONFLICT (msg_id) DO NOTHING",
            (bytes(msg_id), str(msg_type), float(self._clock())),
        )
        if cursor.rowcount == 0:
            raise AlreadyHandled(f"message {bytes(msg_id).hex()} was already handled")

    def emit(
        self,
        msg_type: str,
        payload: dict,
        *,
        datasite_id: str = "",
        round_num: int = 0,
        forward: Any = None,
        sealed: Any = None,
    ) -> None:
        """Queue a message to publish once this transaction commits.

        With a claim-check store, a large payload of a type that may travel by reference is
        sealed into it now (durably, before this transaction commits) and the outbox row holds
        only the reference. ``forward``: the claim-check reference of a received body of the
        type ``msg_type``'s contract forwards, whose fields ``payload`` repeats unchanged; the
        row then names that body (kept by a hard link) and holds only ``payload``'s own fields;
        sealed as above when the body cannot be kept. ``sealed``: the reference of a body this
        very message was already sealed into (``ClaimStore.deposit`` before the transaction, so
        sealing waits for no lock); the row holds it, and a rollback removes the body.
        """
        if sealed is not None and self.claims is not None:
            self._queue_reference(msg_type, payload, sealed, None, datasite_id, int(round_num))
            return
        if forward is not None and self.claims is not None:
            own = _own_fields(msg_type, payload)
            kept = self.claims.keep(forward) if own is not None else None
            if kept is not None:
                self._queue_reference(msg_type, payload, kept, own, datasite_id, int(round_num))
                return
        parts = encode_payload_parts(payload)
        if self.claims is not None:
            if self.claims.applies(msg_type, parts.nbytes):  # sealed and written meanwhile
                pending = self.claims.deposit_later(
                    msg_type, parts, datasite_id=datasite_id, round_num=int(round_num)
                )
                self._deferred.append((msg_type, pending, payload, datasite_id, int(round_num)))
                return
        self._queue(msg_type, parts, payload, datasite_id, int(round_num))

    def _queue_reference(self, msg_type: str, payload: dict, ref: Any, forwarded: dict | None,
                         datasite_id: str, round_num: int) -> None:  # fmt: skip
        """Queue the reference ``ref`` (with a forwarding reference's own fields) for
        ``payload``, whose body this transaction then owns (removed if it rolls back)."""
        self.claimed.append(ref)
        self.referenced.append((msg_type, payload))
        ref_payload = ref.to_payload(forwarded=forwarded)
        self._queue(
            msg_type, encode_payload_parts(ref_payload), ref_payload, datasite_id, round_num
        )

    def _queue(
        self, msg_type: str, parts: PayloadParts, payload: dict, datasite_id: str, round_num: int
    ) -> None:
        """Insert an outbox row now, or behind the pending claim bodies (emit order kept)."""
        if self._deferred:
            self._deferred.append((msg_type, parts, payload, datasite_id, round_num))
        else:
            self._insert(msg_type, parts, payload, datasite_id, round_num)

    def finish_claims(self) -> None:
        """Wait for this transaction's claim bodies (durable once this returns) and queue their
        references, in emit order; the store calls it just before committing."""
        while self._deferred:
            msg_type, item, payload, datasite_id, round_num = self._deferred[0]
            if not isinstance(item, PayloadParts):
                claim = item.result()  # raises: the rest stays for abandon_claims
                self.claimed.append(claim)
                self.referenced.append((msg_type, payload))
                payload = claim.to_payload()
                item = encode_payload_parts(payload)
            self._insert(msg_type, item, payload, datasite_id, round_num)
            self._deferred.pop(0)

    def abandon_claims(self) -> list[Any]:
        """Every claim body this transaction wrote or is writing (after those finish)."""
        deferred, self._deferred = self._deferred, []
        for _, item, _, _, _ in deferred:
            if not isinstance(item, PayloadParts):
                try:
                    self.claimed.append(item.result())
                except Exception:  # a body that failed to be written is not there to remove
                    continue
        return self.claimed

    def _insert(
        self, msg_type: str, parts: PayloadParts, payload: dict, datasite_id: str, round_num: int
    ) -> None:
        encoded, ref, nbytes = self._keep(parts)
        row = self._x(
            "INSERT INTO outbox (msg_type, payload, datasite_id, round_num, blob)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (str(msg_type), encoded, datasite_id, int(round_num), ref),
        ).fetchone()
        self.emitted.append((int(row[0]), payload, nbytes))


def _own_fields(msg_type: str, payload: dict) -> dict | None:
    """The fields of ``payload`` that the type ``msg_type`` forwards does not have (None when
    ``msg_type`` forwards nothing)."""
    from federation.wire.contracts import forwarded_type
    from federation.wire.messages import MESSAGE_CLASSES

    source = forwarded_type(msg_type)
    if source is None:
        return None
    inherited = {f.name for f in fields(MESSAGE_CLASSES[source])}
    return {k: v for k, v in payload.items() if k not in inherited}


class ServiceStore(ABC):
    """One service's durable state; see the module docstring for the guarantees.

    A backend supplies the connection handling (``_begin``/``_commit``/``_rollback``/``_end``),
    outbox claims and the few queries outside a handler's transaction; everything a handler
    does goes through :class:`Transaction` and is the same SQL in both backends.
    """

    backend: ClassVar[str]
    transaction_class: ClassVar[type[Transaction]] = Transaction
    #: Unreferenced blob files younger than this are spared by ``collect_orphans``.
    orphan_grace_s: float = 0.0

    def __init__(
        self,
        blobs: BlobDirectory,
        *,
        inbox_retention_s: float = DEFAULT_INBOX_RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if inbox_retention_s <= 0:
            raise ConfigError("inbox retention must be positive")
        self._blobs = blobs
        self.inbox_retention_s = float(inbox_retention_s)
        self._clock = clock
        self._last_prune = clock()
        self._prune_lock = threading.Lock()
        self._emitted: dict[int, tuple[dict, int]] = {}
        self._emitted_bytes = 0
        self._emitted_lock = threading.Lock()
        #: The claim-check store (runtime.claims) its transactions deposit large updates in.
        self.claims: Any = None

    # -- backend hooks ---------------------------------------------------------------
    @abstractmethod
    def _begin(self) -> Any:
        """A connection inside a new transaction (may wait for the backend's write lock)."""

    @abstractmethod
    def _commit(self, conn: Any) -> None: ...

    @abstractmethod
    def _rollback(self, conn: Any) -> None: ...

    @abstractmethod
    def _end(self, conn: Any) -> None:
        """Give the connection back (after commit or rollback)."""

    @abstractmethod
    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement in its own short transaction; the rows it returns."""

    @abstractmethod
    def claim_outbox(self) -> OutboxClaim | None:
        """The oldest outbox message no other publisher holds, reserved; None when none."""

    @property
    @abstractmethod
    def schema_version(self) -> int:
        """The schema version this store is at."""

    @abstractmethod
    def _close(self) -> None: ...

    # -- transactions ----------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Everything inside commits together or not at all."""
        conn = self._begin()
        tx = self.transaction_class(conn, self._blobs, self._clock)
        tx.claims = self.claims
        try:
            try:
                yield tx
                if tx.claims is not None:
                    tx.finish_claims()
            except BaseException:
                self._rollback(conn)
                self._blobs.remove(tx.created)
                self._discard_claims(tx)
                raise
            try:
                self._commit(conn)
            except BaseException:
                # Claim bodies stay: the commit may have landed, and a published reference
                # must find its body; unreferenced ones are collected after the retention.
                self._blobs.remove(tx.created)
                raise
        finally:
            self._end(conn)
        self._blobs.remove(tx.dropped)
        if self.claims is not None and tx.unpinned:
            self.claims.forget(tx.unpinned)
        self._remember_emitted(tx)
        self._maybe_prune()

    def _discard_claims(self, tx: Transaction) -> None:
        if self.claims is not None:
            self.claims.discard(tx.abandon_claims())

    def _remember_emitted(self, tx: Transaction) -> None:
        with self._emitted_lock:
            for item_id, payload, nbytes in tx.emitted:
                if self._emitted_bytes + nbytes <= EMITTED_CACHE_BYTES:
                    self._emitted[item_id] = (payload, nbytes)
                    self._emitted_bytes += nbytes

    def _forget_emitted(self, item_id: int) -> None:
        with self._emitted_lock:
            cached = self._emitted.pop(item_id, None)
            if cached is not None:
                self._emitted_bytes -= cached[1]

    def read(self, key: str, default: Any = None) -> Any:
        """Read one value outside a handler."""
        with self.transaction() as tx:
            return tx.get(key, default)

    # -- inbox -----------------------------------------------------------------------
    def _maybe_prune(self) -> None:
        now = self._clock()
        if now - self._last_prune < PRUNE_INTERVAL_S or not self._prune_lock.acquire(
            blocking=False
        ):
            return
        try:
            self._last_prune = now
            self.prune_inbox(now)
            if self.claims is not None:
                try:
                    self.collect_claims()
                except Exception:  # the next prune tries again; never fail a committed handler
                    log.exception("collecting claim-check bodies failed")
        finally:
            self._prune_lock.release()

    def prune_inbox(self, now: float | None = None) -> int:
        """Forget handled message ids older than the retention; return how many."""
        cutoff = (self._clock() if now is None else now) - self.inbox_retention_s
        with self.transaction() as tx:
            return int(tx._x("DELETE FROM inbox WHERE at < ?", (cutoff,)).rowcount)

    def inbox_size(self) -> int:
        """How many handled message ids are remembered."""
        return int(self._query("SELECT count(*) FROM inbox")[0][0])

    # -- outbox ----------------------------------------------------------------------
    def pending_outbox_heads(self, limit: int = 100) -> list[OutboxHead]:
        """Messages committed but not yet confirmed published, oldest first, without payloads."""
        rows = self._query(
            "SELECT id, msg_type, datasite_id, round_num FROM outbox ORDER BY id LIMIT ?", (limit,)
        )
        return [OutboxHead(*r) for r in rows]

    def cached_outbox_payload(self, item_id: int) -> dict | None:
        """The payload of a message this process committed, if still in memory (no I/O).

        No lock: the event loop calls this, and one dict lookup is atomic, whereas a commit
        writing a large blob in another thread may hold the store.
        """
        hit = self._emitted.get(item_id)
        return None if hit is None else hit[0]

    def outbox_payload(self, item_id: int) -> dict:
        """The payload of one pending outbox message (from memory when possible)."""
        cached = self.cached_outbox_payload(item_id)
        if cached is not None:
            return cached
        rows = self._query("SELECT payload, blob FROM outbox WHERE id = ?", (item_id,))
        if not rows:
            raise KeyError(f"no outbox message {item_id}")
        return self._blobs.load(rows[0][0], rows[0][1])

    def pending_outbox(self, limit: int = 100) -> list[OutboxItem]:
        """Messages committed but not yet confirmed published, oldest first."""
        return [
            OutboxItem(h.id, h.msg_type, self.outbox_payload(h.id), h.datasite_id, h.round_num)
            for h in self.pending_outbox_heads(limit)
        ]

    def outbox_done(self, item_id: int) -> None:
        """Forget an outbox message once the broker confirmed it."""
        with self.transaction() as tx:
            row = tx._x("DELETE FROM outbox WHERE id = ? RETURNING blob", (item_id,)).fetchone()
        self._outbox_gone(item_id, None if row is None else row[0])

    def _outbox_gone(self, item_id: int, blob: str | None) -> None:
        if blob is not None:
            self._blobs.remove([blob])
        self._forget_emitted(item_id)

    # -- blobs and lifetime ----------------------------------------------------------
    def collect_orphans(self) -> int:
        """Remove blob files no row references (left by a crash mid-commit); return how many."""
        live = {
            r[0]
            for r in self._query(
                "SELECT blob FROM kv WHERE blob IS NOT NULL"
                " UNION SELECT blob FROM outbox WHERE blob IS NOT NULL"
            )
        }
        return self._blobs.collect(live, older_than_s=self.orphan_grace_s)

    def collect_claims(self) -> int:
        """Remove this service's claim bodies past their retention (see runtime.claims)."""
        from federation.runtime.claims import live_claims

        rows = self._query("SELECT payload FROM outbox WHERE blob IS NULL")
        live = live_claims(self._blobs.load(r[0], None) for r in rows)
        pins = self._query("SELECT blob FROM kv WHERE blob LIKE ?", (PIN_PREFIX + "%",))
        live.update(r[0][len(PIN_PREFIX) :] for r in pins)
        return self.claims.collect(live, self.inbox_retention_s)

    def settle(self) -> None:
        """Wait until the files of values dropped by committed transactions are unlinked."""
        self._blobs.settle()

    def close(self) -> None:
        """Close the database (after the pending unlinks)."""
        self._blobs.stop()
        self._close()


def open_store(
    settings: Any,
    service_key: str,
    *,
    path: str | Path | None = None,
    collect_orphans: bool = True,
) -> ServiceStore:
    """The store ``settings`` select for one service (``service_key``: its name, e.g. security).

    ``PDMFED_STATE_URL=postgresql://...``: schema ``pdmfed_<service_key>`` (``-`` as ``_``, the
    identifier PostgreSQL takes unquoted: ``pdmfed_trainer_dispatch``) in that database and
    blob files in ``PDMFED_BLOB_DIR/<service_key>`` (a directory every replica of the service
    mounts; default ``PDMFED_STATE_DIR/blobs``). Unset: SQLite at ``path`` (default
    ``PDMFED_STATE_DIR/<service_key>.sqlite``). ``collect_orphans``: the owning service removes
    blob files a crash left unreferenced (never a reader such as ``pdmfed status``).
    """
    retention = float(getattr(settings, "inbox_retention_s", DEFAULT_INBOX_RETENTION_S))
    url = getattr(settings, "state_url", None)
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "PDMFED_STATE_URL must be a postgresql:// URL (unset: SQLite in PDMFED_STATE_DIR)"
            )
        from federation.runtime.store_postgres import PostgresStore
        from federation.runtime.store_postgres_roles import schema_of

        blob_root = settings.blob_dir or Path(settings.state_dir) / "blobs"
        return PostgresStore(
            url,
            schema=schema_of(service_key),
            blob_dir=Path(blob_root) / service_key,
            collect_orphans=collect_orphans,
            inbox_retention_s=retention,
        )
    from federation.runtime.store_sqlite import SqliteStore

    target = path if path is not None else Path(settings.state_dir) / f"{service_key}.sqlite"
    return SqliteStore(target, collect_orphans=collect_orphans, inbox_retention_s=retention)
