"""Seal/open middleware written once: handlers only ever see verified, fresh, typed payloads."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from federation.bus.base import Bus, Delivery, RejectMessage, RequeueMessage
from federation.errors import MalformedMessage, PdmFedError, ReplayError

__all__ = ["SecureEndpoint", "SecureHandler", "RoundGuard"]

log = logging.getLogger(__name__)

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


def _update_id(envelope: Any) -> bytes | None:
    chunk = getattr(envelope, "chunk", None)
    return bytes(chunk["update_id"]) if chunk else None


class SecureEndpoint:
    """Publishes sealed envelopes and consumes them through every check before the handler.

    Consumption per delivery: open in a worker thread (decode, version, key, signature, AEAD,
    checksum, freshness/replay), msg_type == routing key, typed payload, round guard, handler.
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
    ) -> None:
        self.bus = bus
        self.sealer = sealer
        self.metrics = metrics
        self.service = service
        self.round_guard = round_guard
        if not isinstance(sealer.replay, _RedeliveryAwareReplay):
            sealer.replay = _RedeliveryAwareReplay(sealer.replay)
        self._failed_chunked = _FailedChunked()

    # -- publishing -----------------------------------------------------------------
    async def publish(
        self, msg_type: Any, message: Any, *, datasite_id: str = "", round_num: int = 0
    ) -> int:
        """Seal (chunking when large) and publish; returns the number of bodies published."""
        kind = _msg_type_value(msg_type)
        payload = _to_payload(message)
        bodies = await asyncio.to_thread(
            self.sealer.seal, kind, payload, datasite_id=datasite_id, round_num=round_num
        )
        for body in bodies:
            await self.bus.publish(kind, body)
        if self.metrics is not None:
            self.metrics.messages_published.labels(service=self.service, msg_type=kind).inc()
            self.metrics.message_bytes.labels(service=self.service, direction="out").inc(
                sum(len(b) for b in bodies)
            )
        return len(bodies)

    # -- consuming --------------------------------------------------------------------
    async def subscribe(
        self,
        queue: str,
        handler: SecureHandler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
    ) -> None:
        """Consume ``queue``; ``handler(msg_type, payload_obj, envelope)`` sees only good messages."""

        async def on_delivery(delivery: Delivery) -> None:
            await self._handle(delivery, handler)

        await self.bus.consume(queue, on_delivery, prefetch=prefetch, concurrency=concurrency)

    def _open(self, delivery: Delivery) -> tuple[Any, Any] | None:
        """CPU-bound part, run in a worker thread: open, bind to the routing key, type the payload."""
        from federation.wire.envelope import decode_envelope
        from federation.wire.messages import parse_payload

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
        return envelope, parse_payload(envelope.msg_type, opened.payload)

    async def _handle(self, delivery: Delivery, handler: SecureHandler) -> None:
        kind = delivery.routing_key
        if self.metrics is not None:
            self.metrics.message_bytes.labels(service=self.service, direction="in").inc(
                len(delivery.body)
            )
        envelope: Any = None
        try:
            opened = await asyncio.to_thread(self._open, delivery)
            if opened is None:
                return
            envelope, payload = opened
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
                    self.metrics.handler_seconds.labels(
                        service=self.service, msg_type=kind
                    ).observe(time.perf_counter() - start)
            update_id = _update_id(envelope)
            if update_id is not None:
                self._failed_chunked.drop(update_id)
            if self.metrics is not None:
                self.metrics.messages_consumed.labels(service=self.service, msg_type=kind).inc()
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
            self.metrics.messages_rejected.labels(service=self.service, reason=reason).inc()


def _typed(kind: str) -> Any:
    from federation.wire.messages import MsgType

    return MsgType(kind)
