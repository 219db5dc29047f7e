"""Seal/open middleware written once: handlers only ever see verified, fresh, typed payloads."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from federation.bus.base import Bus, Delivery, RejectMessage, RequeueMessage
from federation.errors import (
    BusError,
    ChunkError,
    ClaimError,
    ConfigError,
    MalformedMessage,
    PdmFedError,
    ReplayError,
)
from federation.wire.claims import (
    ClaimReference,
    forwarded_fields,
    forwarded_id,
    merge_forwarded,
)
from federation.wire.codec import rough_nbytes
from federation.wire.contracts import forwarded_type, may_refer

__all__ = ["SecureEndpoint", "SecureHandler", "RoundGuard"]

log = logging.getLogger(__name__)

#: Payloads up to this many bytes are sealed on the event loop: ``publish`` waits for the seal
#: anyway, and a worker-thread round trip adds GIL hand-offs with the loop (up to the 5 ms switch
#: interval each under load) to the publisher's critical path. ~0.7 ms of CPU per MiB, mostly
#: SHA-256 and AES-GCM, which release the GIL; a chunked payload's digests use a helper thread.
INLINE_SEAL_BYTES = 16 * 1024 * 1024
#: Bodies up to this many bytes are opened on the event loop, larger ones in a worker thread.
#: Measured in bench_broker: inline is ~20% faster end to end at 1 MiB (no thread trip, no GIL
#: hand-offs), a worker thread faster for 4 MiB chunks (the loop keeps publishing meanwhile).
INLINE_OPEN_BYTES = 2 * 1024 * 1024
#: Deliveries in progress at once on a ``concurrency=1`` subscription (handlers stay one at a
#: time, in order): while one is handled, two more are opened in worker threads (a large chunk's
#: verification, or a claim-check body's reading and opening, on both cores of a small machine;
#: ~0.2 s less per 10M x 10 round by claim check than one at a time, bench/round_timeline.py).
OPEN_AHEAD = 3
#: Chunks of one message in flight (published, confirm pending) at once.
PUBLISH_WINDOW = 4
#: Seconds a delivery waits before it is requeued because infrastructure failed (BusError).
STORE_RETRY_S = 1.0

#: What decoding or validating received bytes may raise besides our own errors (a library's
#: refusal, a validator's oversight): the message is malformed. MemoryError and OSError are not
#: here: they say nothing about the message and stay transient (requeued).
_DECODE_FAILURES = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    RuntimeError,
    ArithmeticError,
)

#: ``async (msg_type, payload_obj, envelope) -> None``
SecureHandler = Callable[[Any, Any, Any], Awaitable[None]]
#: ``(msg_type, payload_obj) -> None``; raises StaleRoundError for a closed round.
RoundGuard = Callable[[str, Any], None]


def _msg_type_value(msg_type: Any) -> str:
    return str(getattr(msg_type, "value", msg_type))


def _to_payload(message: Any) -> dict:
    if isinstance(message, dict):
        return message
    to_payload = getattr(message, "to_payload", None)
    if to_payload is None:
        raise MalformedMessage(f"cannot publish a {type(message).__name__}: no to_payload()")
    return to_payload()


#: Set (in the worker thread that opens a body) when the broker marked the delivery redelivered.
_REDELIVERY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pdmfed_redelivery", default=False
)


@dataclass(frozen=True)
class _Reference:
    """A received claim-check reference, redeemed off the event loop (``_redeem``)."""

    claim: ClaimReference
    #: A forwarding reference's own fields (wire.claims), None for a plain reference.
    forwarded: dict[str, Any] | None = None


class _RedeliveryAwareReplay:
    """Wraps the sealer's ReplayGuard: a broker redelivery of a seen msg_id is not a replay.

    The guard remembers a msg_id when a body is opened, before the handler runs. If the handler
    then fails (or the process dies) the broker redelivers the very same message with its
    ``redelivered`` flag set — a flag only the broker sets, so a copy re-published by an
    attacker always arrives with it clear and is still rejected as a replay. Expiry is still
    checked first. A redelivered message that a crashed consumer had in fact handled reaches the
    handler twice; handlers deduplicate by msg_id (at-least-once delivery).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def precheck(self, msg_id: bytes, timestamp: float, now: float | None = None) -> None:
        try:
            self.inner.precheck(msg_id, timestamp, now)
        except ReplayError:
            if not _REDELIVERY.get():
                raise

    def check(self, msg_id: bytes, timestamp: float, now: float | None = None) -> None:
        try:
            self.inner.check(msg_id, timestamp, now)
        except ReplayError:
            if not _REDELIVERY.get():
                raise
            log.info("msg_id %s redelivered by the broker; not a replay", bytes(msg_id).hex())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _FailedChunked:
    """Assembled chunked messages whose handler failed, kept for their redelivered last chunk.

    The earlier chunks were acked and the assembler let go of them, so without this a failed
    handler would turn the redelivered last chunk into a new, never-completing assembly.
    """

    def __init__(self, max_items: int = 4, ttl_s: float = 600.0) -> None:
        self._items: OrderedDict[bytes, tuple[float, Any, Any]] = OrderedDict()
        self.max_items = max_items
        self.ttl_s = ttl_s

    def put(self, update_id: bytes, envelope: Any, payload: Any) -> None:
        self._items[update_id] = (time.monotonic() + self.ttl_s, envelope, payload)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def get(self, update_id: bytes) -> tuple[Any, Any] | None:
        item = self._items.get(update_id)
        if item is None or item[0] < time.monotonic():
            self._items.pop(update_id, None)
            return None
        return item[1], item[2]

    def drop(self, update_id: bytes) -> None:
        self._items.pop(update_id, None)


class _Turn:
    """One delivery's place in handler order: wait for the previous one, then finish."""

    __slots__ = ("_prev", "_done")

    def __init__(self, prev: asyncio.Future[None] | None, done: asyncio.Future[None]) -> None:
        self._prev = prev
        self._done = done

    async def wait(self) -> None:
        if self._prev is not None and not self._prev.done():
            await asyncio.shield(self._prev)

    def finish(self) -> None:
        """Let the next delivery's handler run once every earlier one has (idempotent)."""
        if self._done.done():
            return
        if self._prev is None or self._prev.done():
            self._done.set_result(None)
        else:  # finished without running a handler: pass the turn on when the previous ends
            self._prev.add_done_callback(lambda _: self._done.done() or self._done.set_result(None))


class _InOrder:
    """Hands out turns in call order (each turn's handler waits for the previous turn)."""

    def __init__(self) -> None:
        self._last: asyncio.Future[None] | None = None

    def next_turn(self) -> _Turn:
        done = asyncio.get_running_loop().create_future()
        turn = _Turn(self._last, done)
        self._last = done
        return turn


def _prepare_first(prepare: Callable[[], Any]) -> tuple[Any, bytes]:
    """Encode and seal the first body in one go (one worker-thread trip)."""
    sealing = prepare()
    return sealing, next(sealing)


def _update_id(envelope: Any) -> bytes | None:
    chunk = getattr(envelope, "chunk", None)
    return bytes(chunk["update_id"]) if chunk else None


class SecureEndpoint:
    """Publishes sealed envelopes and consumes them through every check before the handler.

    Consumption per delivery: open (decode, version, key, signature, sender's role may send
    this type (``forbidden`` otherwise; before anything is decrypted or reassembled), AEAD, checksum,
    freshness/replay; on the loop up to ``inline_open_bytes`` when the seen-id store is in
    memory, else in a worker thread), msg_type == routing key, typed payload, round guard,
    handler.
    Every PdmFedError (from the checks or from the handler) dead-letters the message with its
    reason and counts it in ``pdmfed_messages_rejected_total``; any other handler exception
    requeues it as transient. A message redelivered after a failure is processed again rather
    than taken for a replay (see :class:`_RedeliveryAwareReplay`).
    """

    def __init__(
        self,
        bus: Bus,
        sealer: Any,
        metrics: Any,
        service: str,
        *,
        round_guard: RoundGuard | None = None,
        roles: Mapping[str, str] | None = None,
        inline_seal_bytes: int = INLINE_SEAL_BYTES,
        inline_open_bytes: int = INLINE_OPEN_BYTES,
        open_ahead: int = OPEN_AHEAD,
        publish_window: int = PUBLISH_WINDOW,
    ) -> None:
        self.bus = bus
        self.sealer = sealer
        self.metrics = metrics
        self.service = service
        self.round_guard = round_guard
        #: Sender id -> role; consuming refuses to start without it (see :meth:`authorize`).
        self.roles: Any = None
        if roles is not None:
            from federation.runtime.roles import SenderRoles

            self.roles = roles if isinstance(roles, SenderRoles) else SenderRoles(roles)
            sealer.authorize = self.roles.authorize
        self.inline_seal_bytes = inline_seal_bytes
        self.inline_open_bytes = inline_open_bytes
        self.open_ahead = open_ahead
        self.publish_window = publish_window
        self._children: dict[tuple[int, str], Any] = {}
        if not isinstance(sealer.replay, _RedeliveryAwareReplay):
            sealer.replay = _RedeliveryAwareReplay(sealer.replay)
        self._failed_chunked = _FailedChunked()
        #: The claim-check store (runtime.claims) references are redeemed from; None: a
        #: reference is refused (``claim_missing``).
        self.claims: Any = None
        #: Pause before requeueing a delivery that met an unreachable seen-id store or broker.
        self.store_retry_s = STORE_RETRY_S
        assembler = getattr(sealer, "assembler", None)
        if assembler is not None:
            assembler.on_refused = self._reassembly_refused

    # -- chunk reassembly -----------------------------------------------------------
    def learn_campaign(self, config: Any) -> None:
        """Cap chunked updates at the largest one this campaign's model can produce."""
        from federation.campaign import CampaignConfig
        from federation.ml.limits import max_update_bytes

        assembler = getattr(self.sealer, "assembler", None)
        if assembler is None:
            return
        try:
            cfg = (
                config
                if isinstance(config, CampaignConfig)
                else CampaignConfig.from_payload(config)
            )
            assembler.limit_update_bytes(cfg.campaign_id, max_update_bytes(cfg))
        except PdmFedError as err:  # the handler refuses such a campaign; keep the default cap
            log.warning("%s: no update limit from campaign config: %s", self.service, err)

    def _reassembly_refused(self, sender: str, err: PdmFedError) -> None:
        """Count (and log when no caller sees it) a chunk or update reassembly refused."""
        if self.metrics is not None:
            self.metrics.reassembly_refusals.labels(
                service=self.service, sender=sender, reason=err.reason
            ).inc()
        if isinstance(err, ChunkError) and err.reason != "malformed":
            log.warning("%s dropped a chunked update from %s: %s", self.service, sender, err)

    # -- publishing -----------------------------------------------------------------
    async def publish(
        self, msg_type: Any, message: Any, *, datasite_id: str = "", round_num: int = 0
    ) -> int:
        """Seal (chunking when large) and publish; returns the number of bodies published.

        Returns once the broker confirmed every body. A payload up to ``inline_seal_bytes`` is
        sealed on the event loop; a larger one is encoded, digested and its first chunk sealed in
        a worker thread. Chunks are published as soon as each is sealed, their confirms pending
        together (at most ``publish_window`` in flight), instead of one confirm round trip each.
        """
        kind = _msg_type_value(msg_type)
        payload = _to_payload(message)
        prepare = functools.partial(
            self.sealer.prepare, kind, payload, datasite_id=datasite_id, round_num=round_num
        )
        # Encoding copies what is not already contiguous CPU memory: keep large payloads off
        # the loop from the start.
        first: bytes | None = None
        if rough_nbytes(payload, self.inline_seal_bytes) <= self.inline_seal_bytes:
            sealing = prepare()
        else:  # one worker-thread trip encodes, digests the chunks and seals the first body
            sealing, first = await asyncio.to_thread(_prepare_first, prepare)
        if first is None and sealing.count == 1 and sealing.nbytes <= self.inline_seal_bytes:
            body = next(sealing)
            await self.bus.publish(kind, body)
            sent = len(body)
        else:
            sent = await self._publish_pipelined(kind, sealing, first)
        if self.metrics is not None:
            self._child(self.metrics.messages_published, "msg_type", kind).inc()
            self._child(self.metrics.message_bytes, "direction", "out").inc(sent)
        return sealing.count

    async def _publish_pipelined(self, kind: str, sealing: Any, first: bytes | None) -> int:
        window = asyncio.Semaphore(max(1, self.publish_window))
        tasks: list[asyncio.Task[None]] = []
        sent = 0

        async def send(body: bytes) -> None:
            try:
                await self.bus.publish(kind, body)
            finally:
                window.release()

        def failed() -> bool:
            return any(t.done() and not t.cancelled() and t.exception() for t in tasks)

        try:
            for index in range(sealing.count):
                if failed():
                    break
                if index == 0 and first is not None:
                    body = first
                elif index > 0 or sealing.nbytes <= self.inline_seal_bytes:
                    # After the first body the chunk digests are known: sealing a chunk is
                    # AES-GCM + Ed25519 only (~1 ms per 8 MiB), cheaper than a thread trip.
                    body = next(sealing)
                else:
                    body = await asyncio.to_thread(next, sealing)
                await window.acquire()
                sent += len(body)
                tasks.append(asyncio.ensure_future(send(body)))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        # Every body was handed over (or one failed): wait for all confirms, report the first
        # failure. Chunks already confirmed are harmless: the consumer's assembler expires them.
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sent

    def _replay_does_io(self) -> bool:
        """A shared seen-id store (Redis) is a network round trip: never on the event loop."""
        return bool(getattr(self.sealer.replay, "performs_io", True))

    def _child(self, metric: Any, name: str, value: str) -> Any:
        """``metric.labels(service=<this service>, <name>=value)``, cached per metric and value."""
        key = (id(metric), value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(**{"service": self.service, name: value})
        return child

    # -- consuming --------------------------------------------------------------------
    def require_roles(self) -> None:
        """ConfigError unless this endpoint knows each sender's role: without it, any trusted
        key could send any message type, so nothing is consumed."""
        if self.roles is None:
            raise ConfigError(
                f"{self.service}: no sender roles configured; cannot authorize what it consumes"
            )

    async def subscribe(
        self,
        queue: str,
        handler: SecureHandler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
    ) -> None:
        """Consume ``queue``; ``handler(msg_type, payload_obj, envelope)`` sees only good messages.

        With ``concurrency=1`` handlers run one at a time, in the order the bus hands deliveries
        over, but up to ``open_ahead`` deliveries are opened at once (verification of the next
        overlaps the current one's; it only happens when ``prefetch`` lets that many arrive).
        """
        self.require_roles()
        if concurrency == 1 and self.open_ahead > 1:
            order = _InOrder()

            async def on_delivery(delivery: Delivery) -> None:
                await self._handle(delivery, handler, order.next_turn())

            await self.bus.consume(
                queue, on_delivery, prefetch=prefetch, concurrency=self.open_ahead
            )
            return

        async def on_any(delivery: Delivery) -> None:
            await self._handle(delivery, handler)

        await self.bus.consume(queue, on_any, prefetch=prefetch, concurrency=concurrency)

    def open_received(self, delivery: Delivery) -> tuple[Any, Any] | None:
        """A delivery opened, typed and, when it came by reference, redeemed from the claim
        store with every check (a listener outside ``subscribe``: the orchestrator's events).
        None for a chunk of an incomplete message. Blocking: call it in a worker thread."""
        opened = self._open(delivery)
        if opened is not None and isinstance(opened[1], _Reference):
            return self._redeem(*opened)
        return opened

    def _open(self, delivery: Delivery) -> tuple[Any, Any] | None:
        """CPU-bound part (worker thread or copied context): open, bind to routing key, type it.

        Every failure to decode or validate the received bytes is MalformedMessage, so the
        message is dead-lettered on first sight: requeueing it would only fail again.
        """
        try:
            return self._open_delivery(delivery)
        except PdmFedError:
            raise
        except _DECODE_FAILURES as exc:
            raise MalformedMessage(
                f"received message does not decode: {type(exc).__name__}: {exc}"
            ) from exc

    def _open_delivery(self, delivery: Delivery) -> tuple[Any, Any] | None:
        from federation.wire import messages
        from federation.wire.envelope import decode_envelope

        _REDELIVERY.set(delivery.redelivered)
        if delivery.redelivered:
            env = decode_envelope(delivery.body, max_bytes=self.sealer.max_message_bytes)
            update_id = _update_id(env)
            cached = self._failed_chunked.get(update_id) if update_id else None
            if cached is not None and cached[0].msg_id == env.msg_id:
                return cached
        opened = self.sealer.open(delivery.body, expected_msg_type=delivery.routing_key)
        if opened is None:  # a chunk: stored until its message is complete
            return None
        envelope = opened.envelope
        if envelope.msg_type != delivery.routing_key:
            raise MalformedMessage(
                f"msg_type {envelope.msg_type!r} does not match routing key {delivery.routing_key!r}"
            )
        claim = ClaimReference.from_payload(opened.payload)
        if claim is not None:  # redeemed in a worker thread (_redeem)
            if not may_refer(envelope.msg_type):
                raise MalformedMessage(f"{envelope.msg_type} may not travel by reference")
            forwarded = forwarded_fields(opened.payload)
            if forwarded is not None and forwarded_type(envelope.msg_type) is None:
                raise MalformedMessage(f"{envelope.msg_type} may not forward another's body")
            return envelope, _Reference(claim, forwarded)
        return envelope, messages.parse_payload(envelope.msg_type, opened.payload)

    def _redeem(self, outer: Any, reference: _Reference) -> tuple[Any, Any]:
        """The claim-check body: fetched, checked against the reference, opened and typed.

        The handler gets the body's own envelope (with the reference it was redeemed from):
        its msg_id is the same however often the producer's outbox publishes the reference, so
        the inbox handles it once. A forwarding reference's body is the forwarded type's, sealed
        by its own sender: the handler gets the outer message's type and sender with an id
        derived from the body's, and the body's fields with the reference's own.
        """
        from federation.wire import messages
        from federation.wire.envelope import ENVELOPE_RESERVE

        claim = reference.claim
        if self.claims is None:
            raise ClaimError(
                f"{self.service} has no claim store (PDMFED_CLAIM_DIR) to redeem {claim.ref}"
                f" ({outer.msg_type} by reference)"
            )
        limit = int(self.sealer.assembler.max_update_bytes) + ENVELOPE_RESERVE
        try:
            body = self.claims.fetch(claim, max_bytes=limit)
            if reference.forwarded is not None:
                opened = self.sealer.open_forwarded(body, outer, max_bytes=limit)
                payload = merge_forwarded(outer.msg_type, opened.payload, reference.forwarded)
                envelope = replace(outer, msg_id=forwarded_id(opened.envelope.msg_id), claim=claim)
                return envelope, messages.parse_payload(outer.msg_type, payload)
            opened = self.sealer.open_referenced(body, outer, max_bytes=limit)
            envelope = replace(opened.envelope, claim=claim)
            return envelope, messages.parse_payload(outer.msg_type, opened.payload)
        except PdmFedError:
            raise
        except _DECODE_FAILURES as exc:
            raise MalformedMessage(
                f"referenced message does not decode: {type(exc).__name__}: {exc}"
            ) from exc

    async def _handle(
        self, delivery: Delivery, handler: SecureHandler, turn: _Turn | None = None
    ) -> None:
        try:
            await self._handle_in_turn(delivery, handler, turn)
        finally:
            if turn is not None:
                turn.finish()

    async def _handle_in_turn(
        self, delivery: Delivery, handler: SecureHandler, turn: _Turn | None
    ) -> None:
        kind = delivery.routing_key
        if self.metrics is not None:
            self._child(self.metrics.message_bytes, "direction", "in").inc(len(delivery.body))
        envelope: Any = None
        try:
            if len(delivery.body) <= self.inline_open_bytes and not self._replay_does_io():
                # Small: open on the loop, in a copied context as a worker thread would.
                opened = contextvars.copy_context().run(self._open, delivery)
            else:
                opened = await asyncio.to_thread(self._open, delivery)
            if opened is None:
                return
            envelope, payload = opened
            if isinstance(payload, _Reference):  # the bytes come from the claim store
                claim = payload.claim
                envelope, payload = await asyncio.to_thread(self._redeem, envelope, payload)
                if self.metrics is not None:
                    self._child(self.metrics.message_bytes, "direction", "in").inc(claim.size)
            if turn is not None:  # earlier deliveries' handlers first
                await turn.wait()
            if self.round_guard is not None:
                self.round_guard(kind, payload)
            start = time.perf_counter()
            try:
                await handler(_typed(kind), payload, envelope)
            except (PdmFedError, RejectMessage, RequeueMessage, asyncio.CancelledError):
                raise
            except Exception:
                update_id = _update_id(envelope)
                if update_id is not None:
                    self._failed_chunked.put(update_id, envelope, payload)
                raise
            finally:
                if self.metrics is not None:
                    self._child(self.metrics.handler_seconds, "msg_type", kind).observe(
                        time.perf_counter() - start
                    )
            update_id = _update_id(envelope)
            if update_id is not None:
                self._failed_chunked.drop(update_id)
            if kind == "campaign.start":
                self.learn_campaign(getattr(payload, "config", None))
            if self.metrics is not None:
                self._child(self.metrics.messages_consumed, "msg_type", kind).inc()
        except BusError as err:
            # Infrastructure (the shared seen-id store, the broker), not the message: nothing
            # was accepted unchecked; wait a little and let the broker deliver it again.
            log.warning(
                "%s: %s unavailable for %s; requeueing: %s", self.service, err.reason, kind, err
            )
            await asyncio.sleep(self.store_retry_s)
            raise RequeueMessage(str(err)[:200]) from err
        except PdmFedError as err:
            self._count_rejection(err.reason)
            # The reason and the claimed sender, never the payload.
            log.warning(
                "%s rejected %s from %s (delivery %d): %s: %s",
                self.service,
                kind,
                getattr(envelope, "sender", "?"),
                delivery.delivery_count,
                err.reason,
                err,
            )
            raise RejectMessage(err.reason, str(err)[:200]) from err
        except RejectMessage as rej:
            self._count_rejection(rej.reason)
            raise
        except (RequeueMessage, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("%s: handler for %s failed; requeueing", self.service, kind)
            raise RequeueMessage(type(exc).__name__) from exc

    def _count_rejection(self, reason: str) -> None:
        if self.metrics is not None:
            self._child(self.metrics.messages_rejected, "reason", reason).inc()


def _typed(kind: str) -> Any:
    from federation.wire.messages import MsgType

    return MsgType(kind)
