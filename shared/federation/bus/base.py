"""The message-bus interface every backend implements: deliveries, handlers, ack/reject/requeue."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Delivery",
    "Handler",
    "Bus",
    "RejectMessage",
    "RequeueMessage",
    "DeadLetter",
    "dead_letter_info",
    "REASON_HEADER",
    "DETAIL_HEADER",
    "QUEUE_HEADER",
    "ROUTING_KEY_HEADER",
    "DELIVERY_LIMIT_REASON",
    "EXPIRED_REASON",
]

#: Headers the bus adds to a message it dead-letters on purpose.
REASON_HEADER = "x-pdmfed-reason"
DETAIL_HEADER = "x-pdmfed-detail"
QUEUE_HEADER = "x-pdmfed-queue"
ROUTING_KEY_HEADER = "x-pdmfed-routing-key"

#: Reason recorded when a message was requeued more often than its queue's delivery limit.
DELIVERY_LIMIT_REASON = "delivery_limit"
#: Reason recorded when a message outlived its queue's message TTL.
EXPIRED_REASON = "expired"


@dataclass(frozen=True)
class Delivery:
    """One message handed to a consumer; ``delivery_count`` is 1 on the first delivery.

    ``redelivered`` comes from the broker alone (the AMQP frame's flag, never a header a
    publisher could set): the replay guard lets a seen msg_id through only when it is set.
    """

    body: bytes
    routing_key: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    delivery_count: int = 1
    queue: str = ""


Handler = Callable[[Delivery], Awaitable[None]]


class RejectMessage(Exception):  # noqa: N818 - control flow, named after what the broker does
    """Raised by a handler: dead-letter this delivery with ``reason`` (never redeliver it)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RequeueMessage(Exception):  # noqa: N818 - control flow, named after what the broker does
    """Raised by a handler: redeliver later (dead-lettered once past the delivery limit)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or "requeue")
        self.detail = detail


@dataclass(frozen=True)
class DeadLetter:
    """Why and from where a message in the dead-letter queue was dead-lettered."""

    reason: str
    queue: str
    routing_key: str
    detail: str = ""


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def dead_letter_info(delivery: Delivery) -> DeadLetter:
    """Read the reason from our own headers, or from the broker's ``x-death`` when it dead-lettered."""
    headers = delivery.headers or {}
    if REASON_HEADER in headers:
        return DeadLetter(
            reason=_text(headers.get(REASON_HEADER)),
            queue=_text(headers.get(QUEUE_HEADER)),
            routing_key=_text(headers.get(ROUTING_KEY_HEADER)),
            detail=_text(headers.get(DETAIL_HEADER)),
        )
    deaths = headers.get("x-death") or []
    if deaths:
        death = deaths[0]
        keys = death.get("routing-keys") or [""]
        return DeadLetter(
            reason=_text(death.get("reason")),
            queue=_text(death.get("queue")),
            routing_key=_text(keys[0]),
        )
    return DeadLetter(reason="unknown", queue="", routing_key=delivery.routing_key)


class Bus(abc.ABC):
    """A topic bus: publish by routing key, consume a named queue with manual acknowledgement.

    A handler returning normally acks; raising :class:`RejectMessage` dead-letters with a reason;
    raising :class:`RequeueMessage` (or any other exception) redelivers, up to the queue's
    delivery limit, after which the message is dead-lettered with reason ``delivery_limit``.
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and declare the topology (idempotent)."""

    @abc.abstractmethod
    async def close(self, timeout: float = 10.0) -> None:
        """Stop consuming, let in-flight handlers finish (or requeue them), disconnect."""

    @abc.abstractmethod
    async def publish(
        self, routing_key: str, body: bytes, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish durably; raise PublishError when unconfirmed or unroutable."""

    @abc.abstractmethod
    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
    ) -> None:
        """Deliver messages from ``queue`` to ``handler``, at most ``prefetch`` unacked at once."""

    @abc.abstractmethod
    async def consume_events(self, handler: Handler, *, bindings: Iterable[str] = ("#",)) -> str:
        """Bind a private, auto-deleted queue to the exchange (CLI, monitors); return its name."""

    @abc.abstractmethod
    async def queue_depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting those delivered and not yet acked)."""

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True when the bus can publish and every requested consumer is registered."""

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
