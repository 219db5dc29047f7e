"""The service runner: secure subscription, exactly-once commits, outbox flushing, ticks, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from federation.bus.base import RequeueMessage
from federation.errors import ConfigError, EmitError, MalformedMessage
from federation.runtime.observe import observe_emitted
from federation.runtime.shared_chunks import drop_assembly
from federation.runtime.store import AlreadyHandled, ServiceStore, Transaction
from federation.wire.claims import CLAIM_KEY
from federation.wire.messages import MESSAGE_CLASSES, Message, MsgType, parse_payload

__all__ = [
    "Service",
    "ServiceRunner",
    "CheckedTransaction",
    "campaign_lock",
    "round_lock",
    "round_scope",
    "campaign_scope",
    "handled_id",
]

log = logging.getLogger(__name__)


#: Seconds between two sweeps of the outbox (see ``ServiceRunner.outbox_sweep_s``).
OUTBOX_SWEEP_S = 2.0


class CheckedTransaction:
    """A handler's view of its transaction: ``emit`` checks each message against its contract.

    ``tx.emit(RoundOpen(...))`` or ``tx.emit("round.open", {...})``: the sending service's role
    must be allowed to send the type and the payload must validate as that type's dataclass,
    else :class:`EmitError` fails the transaction before anything reaches the outbox.
    """

    def __init__(self, tx: Transaction, role: str) -> None:
        self._tx = tx
        self._role = role

    def emit(self, message: Any, payload: Any = None, **where: Any) -> None:
        from federation.wire.contracts import may_send
        from federation.wire.messages import Message, parse_payload

        if isinstance(message, Message):
            if payload is not None:
                raise EmitError("emit(message) takes no separate payload")
            msg_type, payload = message.msg_type.value, message.to_payload()
        else:
            msg_type = str(getattr(message, "value", message))
        if not may_send(self._role, msg_type):
            raise EmitError(f"{self._role} may not send {msg_type} (see wire.contracts)")
        try:
            parse_payload(msg_type, payload)
        except MalformedMessage as exc:
            raise EmitError(f"{self._role} emitted a malformed {msg_type}: {exc}") from exc
        self._tx.emit(msg_type, payload, **where)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


@dataclass
class Service:
    """A service's logic: one synchronous handler per message class, run inside a transaction.

    ``handlers`` maps a payload class (`federation.wire.messages`) to `(tx, msg, envelope) ->
    None`, ``msg`` an instance of that class; handlers read and write state through `tx` and
    queue outgoing messages with `tx.emit`. They never touch the bus.
    """

    name: str
    queue: str
    handlers: dict[type[Message], Callable[..., None]] = field(default_factory=dict)
    #: Optional async pre-step run OUTSIDE the transaction (slow I/O such as remote training),
    #: `(msg, envelope) -> result`, by message class; the handler then gets `prepared=result`.
    prepare: dict[type[Message], Callable[[Any, Any], Awaitable[Any]]] = field(default_factory=dict)
    #: Optional periodic step `(tx, now) -> None` (deadlines).
    tick: Callable[[Transaction, float], None] | None = None
    tick_interval_s: float = 0.5
    #: Optional `(metrics, store, campaign_id | None) -> None`: set the gauges this service
    #: derives from its state, for one campaign after a handled message, for all at start.
    observe: Callable[[Any, ServiceStore, str | None], None] | None = None
    #: Optional coroutine `(metrics) -> None` run from start to stop (the connector's session
    #: checks); it must catch its own errors.
    background: Callable[[Any], Awaitable[None]] | None = None
    #: `(msg) -> lock name | None`: the work a message belongs to; its transaction holds that
    #: lock first, so replicas sharing the store handle one round (or campaign) one at a time.
    lock_scope: Callable[[Any], str | None] = field(default=lambda msg: round_scope(msg))

    def __post_init__(self) -> None:
        for table in (self.handlers, self.prepare):
            wrong = [k for k in table if not (isinstance(k, type) and issubclass(k, Message))]
            if wrong:
                raise TypeError(f"{self.name}: handlers are keyed by message class, not {wrong!r}")

    def handler_of(self, msg_type: str) -> tuple[type[Message], Callable[..., None]] | None:
        """The payload class and handler for a routing key, or None (not handled here)."""
        try:
            cls = MESSAGE_CLASSES[MsgType(msg_type)]
        except ValueError:
            return None
        handler = self.handlers.get(cls)
        return None if handler is None else (cls, handler)

    @property
    def handled_types(self) -> frozenset[str]:
        """The routing keys it handles (its queue's bindings must be exactly these)."""
        return frozenset(cls.msg_type.value for cls in self.handlers)


def _campaign_of(msg: Any) -> str | None:
    """The campaign a message is about: its own field, a campaign.start's config, a status detail."""
    cid = getattr(msg, "campaign_id", None)
    if cid is None:
        cid = (getattr(msg, "config", None) or {}).get("campaign_id")
    if cid is None:
        cid = getattr(getattr(msg, "detail", None), "campaign_id", None)
    return None if cid is None else str(cid)


def campaign_lock(campaign_id: str) -> str:
    """The lock of all of one campaign's work (trainer-dispatch's round machine)."""
    return f"campaign/{campaign_id}"


def round_lock(campaign_id: str, round_num: int) -> str:
    """The lock of one campaign round's work (security's screening, the aggregator's round)."""
    return f"round/{campaign_id}/{int(round_num):06d}"


def _round_of(msg: Any) -> int | None:
    rnd = getattr(msg, "round_num", None)
    if rnd is None:
        rnd = getattr(getattr(msg, "detail", None), "round_num", None)
    return None if rnd is None else int(rnd)


def round_scope(msg: Any) -> str | None:
    """A message's (campaign, round) lock; its campaign's lock when it names no round."""
    cid = _campaign_of(msg)
    if cid is None:
        return None
    rnd = _round_of(msg)
    return campaign_lock(cid) if rnd is None else round_lock(cid, rnd)


def campaign_scope(msg: Any) -> str | None:
    """A message's campaign lock (work whose rounds touch one shared record)."""
    cid = _campaign_of(msg)
    return None if cid is None else campaign_lock(cid)


def handled_id(envelope: Any) -> bytes:
    """The id that makes handling a message happen once: a chunked message's update id (any of
    its chunks may be the one that completes it, on any replica), else the message id."""
    chunk = getattr(envelope, "chunk", None)
    return bytes(chunk["update_id"]) if chunk else bytes(envelope.msg_id)


class ServiceRunner:
    """Runs a Service on a SecureEndpoint with a ServiceStore."""

    def __init__(
        self, service: Service, endpoint: Any, store: ServiceStore, metrics: Any = None
    ) -> None:
        self.service = service
        self.endpoint = endpoint
        self.store = store
        self.metrics = metrics
        self._flush_lock = asyncio.Lock()
        self._tick_task: asyncio.Task | None = None
        self._background_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        #: Seconds between outbox sweeps: rows a killed replica committed but never published
        #: go out without waiting for the next message or a restart.
        self.outbox_sweep_s = OUTBOX_SWEEP_S
        self._stopping = False
        self.subscribed = False
        #: Handlers run at once (the connector trains several datasites in parallel).
        self.concurrency = 1

    async def start(self) -> None:
        """Flush what a previous run left in the outbox, then consume."""
        await self.flush_outbox()
        self._observe(None)
        # One handler at a time still lets the bus's byte-sized prefetch stream the next chunks
        # in (and open them ahead) while this one is handled; with prefetch 1 every 8 MiB chunk
        # waited for the previous one's ack: a broker round trip per chunk, nothing overlapped.
        prefetch = None if self.concurrency <= 1 else self.concurrency
        await self.endpoint.subscribe(
            self.service.queue, self._on_message, prefetch=prefetch, concurrency=self.concurrency
        )
        self.subscribed = True
        if self.service.tick is not None:
            self._tick_task = asyncio.create_task(
                self._tick_loop(), name=f"{self.service.name}-tick"
            )
        self._sweep_task = asyncio.create_task(
            self._sweep_loop(), name=f"{self.service.name}-outbox"
        )
        if self.service.background is not None:
            self._background_task = asyncio.create_task(
                self.service.background(self.metrics), name=f"{self.service.name}-background"
            )

    async def stop(self) -> None:
        """Stop ticking; the bus owner closes consumers (in-flight messages finish or requeue)."""
        self._stopping = True
        for task in (self._tick_task, self._background_task, self._sweep_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _on_message(self, msg_type: Any, payload: Any, envelope: Any) -> None:
        kind = str(getattr(msg_type, "value", msg_type))
        found = self.service.handler_of(kind)
        if found is None:
            log.debug("%s ignores %s", self.service.name, kind)
            return
        cls, handler = found
        msg = payload if isinstance(payload, cls) else parse_payload(kind, payload)
        msg_id = handled_id(envelope)
        if self._already_handled(msg_id):
            log.info(
                "%s: %s %s already handled, acking the duplicate",
                self.service.name,
                kind,
                msg_id.hex(),
            )
            return
        prepare = self.service.prepare.get(cls)
        extra = {"prepared": await prepare(msg, envelope)} if prepare is not None else {}
        scope = self.service.lock_scope(msg)
        chunk = getattr(envelope, "chunk", None)

        def commit() -> bool:
            try:
                with self.store.transaction() as tx:
                    if scope is not None:  # replicas: one round's work at a time, latest state
                        tx.lock(scope)
                    # First: a replica handling a redelivered copy waits here for our commit,
                    # then rolls back; the effect is never counted twice.
                    tx.mark_handled(msg_id, kind)
                    try:
                        handler(CheckedTransaction(tx, self.service.name), msg, envelope, **extra)
                    except (
                        ConfigError
                    ) as exc:  # a payload that validates as a message but not as config
                        raise MalformedMessage(str(exc)) from exc
                    if chunk:
                        drop_assembly(tx, bytes(chunk["update_id"]))
            except AlreadyHandled:
                return False
            # Messages sent by claim-check reference carry none of their fields through the
            # outbox: their gauges and counters come from the committed originals.
            for referred_type, original in tx.referenced:
                self._observe_emitted(referred_type, original)
            return True

        try:
            if not await asyncio.to_thread(commit):
                log.info(
                    "%s: %s %s handled by another replica", self.service.name, kind, msg_id.hex()
                )
                return
        except EmitError as err:  # our fault, not the message's: retried, then dead-lettered
            log.error("%s: handling %s failed its own contract: %s", self.service.name, kind, err)
            raise RequeueMessage(str(err)[:200]) from err
        cid = _campaign_of(msg)
        if cid is not None:
            self._observe(cid)
        await self.flush_outbox()

    def _observe(self, campaign_id: str | None) -> None:
        observe = self.service.observe
        if observe is None or self.metrics is None:
            return
        try:
            observe(self.metrics, self.store, campaign_id)
        except Exception:  # a gauge is never worth a lost message or a dead service
            log.exception("%s: updating metrics failed", self.service.name)

    def _observe_emitted(self, msg_type: str, payload: dict) -> None:
        try:
            observe_emitted(self.metrics, msg_type, payload)
        except Exception:  # a gauge is never worth a stalled outbox
            log.exception("%s: metrics of an emitted %s failed", self.service.name, msg_type)

    def _already_handled(self, msg_id: bytes) -> bool:
        with self.store.transaction() as tx:
            return tx.seen(msg_id)

    async def flush_outbox(self) -> int:
        """Publish committed messages; each is removed only after the broker confirmed it.

        Each message is claimed first (PostgreSQL: ``FOR UPDATE SKIP LOCKED``), so replicas
        flushing one outbox never publish the same row at once; the claim of a replica that
        dies ends with its database session and another replica publishes the row.
        """
        published = 0
        async with self._flush_lock:
            while True:
                claim = await asyncio.to_thread(self.store.claim_outbox)
                if claim is None:
                    return published
                head = claim.head
                try:  # one payload in memory at a time; just-committed ones cost no I/O
                    payload = self.store.cached_outbox_payload(head.id)
                    if payload is None:
                        payload = await asyncio.to_thread(self.store.outbox_payload, head.id)
                    if self.store.claims is not None and CLAIM_KEY in payload:
                        # a reference: its body's retention restarts as it goes out
                        await asyncio.to_thread(self.store.claims.touch, payload)
                    await self.endpoint.publish(
                        head.msg_type,
                        payload,
                        datasite_id=head.datasite_id,
                        round_num=head.round_num,
                    )
                except BaseException:
                    await asyncio.shield(asyncio.to_thread(claim.release))
                    raise
                await asyncio.to_thread(claim.done)
                if CLAIM_KEY not in payload:  # a reference's original was observed at commit
                    self._observe_emitted(head.msg_type, payload)
                published += 1

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.outbox_sweep_s)
            try:
                await self.flush_outbox()
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker or the database is away: the next sweep retries
                log.exception("%s: outbox sweep failed", self.service.name)

    async def _tick_loop(self) -> None:
        tick = self.service.tick
        assert tick is not None
        while not self._stopping:
            await asyncio.sleep(self.service.tick_interval_s)
            try:
                now = time.time()

                def run(now: float = now) -> None:
                    with self.store.transaction() as tx:
                        tick(CheckedTransaction(tx, self.service.name), now)

                await asyncio.to_thread(run)
                await self.flush_outbox()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed tick is retried next interval; never kill the service
                log.exception("%s: tick failed", self.service.name)
