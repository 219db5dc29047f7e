"""The RabbitMQ bus (aio-pika): confirmed mandatory publishes, manual acks, robust reconnects."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from federation.bus.base import (
    DELIVERY_LIMIT_REASON,
    DETAIL_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    ROUTING_KEY_HEADER,
    Bus,
    Delivery,
    Handler,
    RejectMessage,
    RequeueMessage,
)
from federation.bus.topology import DEFAULT_TOPOLOGY, Topology, declare_topology
from federation.bus.url import connect_with_retry, parse_amqp_url
from federation.errors import BusError, ConfigError, PublishError

__all__ = ["RabbitBus", "prefetch_count_for"]

log = logging.getLogger(__name__)

_MiB = 1024 * 1024
# Failures worth retrying: the robust connection restores itself and a retried publish that the
# broker had in fact accepted is dropped by the consumers' replay guard (msg_id).
_TRANSIENT = (
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    asyncio.TimeoutError,
    RuntimeError,
)


def prefetch_count_for(prefetch_bytes: int, expected_message_bytes: int) -> int:
    """How many unacked messages fit the byte budget (at least one)."""
    return max(1, prefetch_bytes // max(1, expected_message_bytes))


def _redelivery_of(flag: bool | None, headers: Mapping[str, Any]) -> tuple[bool, int]:
    """(redelivered, delivery count) of one delivery, trusting only what the broker set on it.

    ``redelivered`` is the flag of the AMQP ``basic.deliver`` frame, which only the broker
    writes. Any publisher can put an ``x-delivery-count`` header on a message, so the header
    counts only on a delivery the broker flagged as redelivered (a quorum queue then sets it
    itself); on a first delivery it is ignored and the count is 1.
    """
    if not flag:
        return False, 1
    try:
        previous = int(headers.get("x-delivery-count") or 0)
    except (TypeError, ValueError):
        previous = 0
    return True, max(previous, 1) + 1


class _Consumer:
    def __init__(self, queue: str, channel: Any, amqp_queue: Any, tag: str) -> None:
        self.queue = queue
        self.channel = channel
        self.amqp_queue = amqp_queue
        self.tag = tag


class RabbitBus(Bus):
    """A :class:`Bus` over RabbitMQ with separate publishing and consuming connections.

    Rejections are dead-lettered by publishing a copy to the DLX with an ``x-pdmfed-reason``
    header (inside a publisher confirm) and then acking the original: ``basic.reject`` cannot
    carry a reason, and operators need the reason next to the message. Requeues use
    ``basic.reject(requeue=True)``; the quorum queue counts ``x-delivery-count``, and past the
    delivery limit the bus dead-letters with reason ``delivery_limit`` (the queue's own
    ``x-delivery-limit`` stays as a backstop for consumers that crash in a loop).
    """

    def __init__(
        self,
        url: str,
        *,
        service: str,
        topology: Topology = DEFAULT_TOPOLOGY,
        prefetch_bytes: int = 64 * _MiB,
        expected_message_bytes: int = 8 * _MiB,
        heartbeat: int = 30,
        reconnect_interval: float = 2.0,
        publish_timeout: float = 30.0,
        declare: bool = True,
        connect_give_up_s: float = 60.0,
    ) -> None:
        self._url = url
        #: host, port, vhost and user of the URL, checked now (a ConfigError names the problem)
        self.target = parse_amqp_url(url)
        #: how long an unreachable broker is retried at start-up before giving up
        self.connect_give_up_s = connect_give_up_s
        self.service = service
        self.topology = topology
        self.prefetch_count = prefetch_count_for(prefetch_bytes, expected_message_bytes)
        self._heartbeat = heartbeat
        self._reconnect_interval = reconnect_interval
        self.publish_timeout = publish_timeout
        self._declare = declare
        self._limits = {q.name: q.delivery_limit for q in topology.all_queues()}
        self._pub_conn: AbstractRobustConnection | None = None
        self._con_conn: AbstractRobustConnection | None = None
        self._pub_channel: Any = None
        self._consumers: list[_Consumer] = []
        self._inflight = 0
        self._closing = False

    async def _connect(self, role: str) -> AbstractRobustConnection:
        # Never echo the URL: it may carry the password (errors name host, port, vhost, user).
        return await connect_with_retry(
            lambda: aio_pika.connect_robust(
                self._url,
                heartbeat=self._heartbeat,
                reconnect_interval=self._reconnect_interval,
                client_properties={"connection_name": f"pdmfed-{self.service}-{role}"},
            ),
            self.target,
            give_up_after_s=self.connect_give_up_s,
        )

    async def start(self) -> None:
        if self._pub_conn is not None:
            return
        self._closing = False
        self._pub_conn = await self._connect("publish")
        self._con_conn = await self._connect("consume")
        self._pub_channel = await self._pub_conn.channel(
            publisher_confirms=True, on_return_raises=True
        )
        if self._declare:
            try:
                await declare_topology(self._pub_channel, self.topology)
            except aiormq.exceptions.ChannelAccessRefused as exc:
                await self.close()
                raise ConfigError(
                    f"broker user {self.target.user!r} may not declare the topology on vhost"
                    f" {self.target.vhost!r} (least privilege):"
                    " set PDMFED_DECLARE_TOPOLOGY=false, the broker loads it from its definitions"
                ) from exc
        self._exchange = await self._pub_channel.get_exchange(self.topology.exchange.name)
        self._dlx = await self._pub_channel.get_exchange(self.topology.dlx.name)

    async def close(self, timeout: float = 10.0) -> None:
        if self._pub_conn is None:
            return
        self._closing = True
        for consumer in self._consumers:
            try:
                await consumer.amqp_queue.cancel(consumer.tag)
            except Exception as exc:  # already gone with its channel
                log.debug("cancel %s: %s", consumer.queue, exc)
        deadline = time.monotonic() + timeout
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # Unacked deliveries go back to their queue when the consuming connection closes.
        for conn in (self._con_conn, self._pub_conn):
            if conn is not None:
                try:
                    await conn.close()
                except Exception as exc:
                    log.debug("close: %s", exc)
        self._consumers.clear()
        self._pub_conn = self._con_conn = None

    def _require_started(self) -> None:
        if self._pub_conn is None:
            raise BusError("bus not started")

    async def _publish_to(
        self, exchange: Any, routing_key: str, body: bytes, headers: Mapping[str, Any]
    ) -> None:
        message = aio_pika.Message(
            bytes(body),
            headers=dict(headers),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/msgpack",
        )
        deadline = time.monotonic() + self.publish_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                result = await exchange.publish(
                    message, routing_key, mandatory=True, timeout=max(0.1, remaining)
                )
            except aio_pika.exceptions.PublishError as exc:
                raise PublishError(
                    f"unroutable message: no queue bound to {routing_key!r}"
                ) from exc
            except aio_pika.exceptions.DeliveryError as exc:
                raise PublishError(f"broker refused message for {routing_key!r}") from exc
            except _TRANSIENT as exc:
                if self._closing or time.monotonic() >= deadline:
                    raise PublishError(
                        f"publish of {routing_key!r} not confirmed: {type(exc).__name__}"
                    ) from exc
                await asyncio.sleep(min(0.5, self._reconnect_interval))
                continue
            if isinstance(result, aiormq.abc.DeliveredMessage):  # returned, not confirmed
                raise PublishError(f"unroutable message: no queue bound to {routing_key!r}")
            return

    async def publish(
        self, routing_key: str, body: bytes, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        self._require_started()
        if not isinstance(body, bytes | bytearray | memoryview):
            raise PublishError(f"body must be bytes, got {type(body).__name__}")
        await self._publish_to(self._exchange, routing_key, body, headers or {})

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
    ) -> None:
        self._require_started()
        assert self._con_conn is not None
        channel = await self._con_conn.channel()
        await channel.set_qos(prefetch_count=max(1, prefetch or self.prefetch_count))
        try:
            amqp_queue = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise BusError(f"no such queue: {queue!r}") from exc
        await self._start_consumer(queue, channel, amqp_queue, handler, concurrency)

    async def _start_consumer(
        self, queue: str, channel: Any, amqp_queue: Any, handler: Handler, concurrency: int
    ) -> None:
        gate = asyncio.Semaphore(max(1, concurrency))
        limit = self._limits.get(queue)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with gate:
                self._inflight += 1
                try:
                    await self._process(queue, limit, handler, message)
                finally:
                    self._inflight -= 1

        tag = await amqp_queue.consume(on_message)
        self._consumers.append(_Consumer(queue, channel, amqp_queue, tag))

    async def consume_events(self, handler: Handler, *, bindings: Iterable[str] = ("#",)) -> str:
        self._require_started()
        assert self._con_conn is not None
        channel = await self._con_conn.channel()
        await channel.set_qos(prefetch_count=self.prefetch_count)
        amqp_queue = await channel.declare_queue(
            None, exclusive=True, auto_delete=True, durable=False
        )
        exchange = await channel.get_exchange(self.topology.exchange.name)
        for key in bindings:
            await amqp_queue.bind(exchange, key)
        await self._start_consumer(amqp_queue.name, channel, amqp_queue, handler, 1)
        return amqp_queue.name

    async def _process(
        self, queue: str, limit: int | None, handler: Handler, message: AbstractIncomingMessage
    ) -> None:
        headers = dict(message.headers or {})
        redelivered, count = _redelivery_of(message.redelivered, headers)
        delivery = Delivery(
            body=message.body,
            routing_key=message.routing_key or "",
            headers=headers,
            redelivered=redelivered,
            delivery_count=count,
            queue=queue,
        )
        try:
            await handler(delivery)
        except RejectMessage as exc:
            await self._dead_letter(queue, message, exc.reason, exc.detail)
            return
        except asyncio.CancelledError:
            await self._settle(message.reject(requeue=True))
            raise
        except Exception as exc:  # RequeueMessage, or a handler bug: never lose the message
            if not isinstance(exc, RequeueMessage):
                log.exception("handler failed on %s; requeueing", queue)
            if limit is not None and count > limit:
                await self._dead_letter(queue, message, DELIVERY_LIMIT_REASON, str(exc))
            else:
                await self._settle(message.reject(requeue=True))
            return
        await self._settle(message.ack())

    async def _dead_letter(
        self, queue: str, message: AbstractIncomingMessage, reason: str, detail: str
    ) -> None:
        headers = dict(message.headers or {})
        headers.update(
            {
                REASON_HEADER: reason,
                DETAIL_HEADER: detail[:512],
                QUEUE_HEADER: queue,
                ROUTING_KEY_HEADER: message.routing_key or "",
            }
        )
        service = queue.rsplit(".", 1)[-1]
        try:
            await self._publish_to(self._dlx, f"dead.{service}", message.body, headers)
        except PublishError as exc:
            # Could not park it with its reason: leave it to the broker's own dead-lettering.
            log.error("dead-letter copy failed (%s); rejecting to the queue's DLX", exc)
            await self._settle(message.reject(requeue=False))
            return
        await self._settle(message.ack())

    @staticmethod
    async def _settle(op: Any) -> None:
        try:
            await op
        except Exception as exc:  # channel gone: the broker redelivers the message
            log.warning("ack/reject not delivered (%s); broker will redeliver", type(exc).__name__)

    async def queue_depth(self, queue: str) -> int:
        self._require_started()
        assert self._pub_conn is not None
        try:
            async with self._pub_conn.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                return int(declared.declaration_result.message_count)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise BusError(f"no such queue: {queue!r}") from exc
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            raise BusError(f"queue_depth({queue!r}) failed: {type(exc).__name__}") from exc

    def is_ready(self) -> bool:
        if self._pub_conn is None or self._closing:
            return False
        if self._pub_channel is None or self._pub_channel.is_closed:
            return False
        return all(not c.channel.is_closed for c in self._consumers)

    async def delete_topology(self) -> None:
        """Delete this bus's topology from the broker (tests and teardown only)."""
        from federation.bus.topology import delete_topology

        self._require_started()
        assert self._pub_conn is not None
        async with self._pub_conn.channel() as channel:
            await delete_topology(channel, self.topology)
