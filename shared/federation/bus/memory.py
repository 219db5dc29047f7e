"""An in-process bus with RabbitMQ's semantics, for the embedded demo and unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.bus.base import (
    DELIVERY_LIMIT_REASON,
    DETAIL_HEADER,
    EXPIRED_REASON,
    QUEUE_HEADER,
    REASON_HEADER,
    ROUTING_KEY_HEADER,
    Bus,
    Delivery,
    Handler,
    RejectMessage,
    RequeueMessage,
)
from federation.bus.topology import DEFAULT_TOPOLOGY, QueueSpec, Topology, topic_matches
from federation.errors import BusError, PublishError

__all__ = ["InMemoryBroker", "InMemoryBus"]

log = logging.getLogger(__name__)


@dataclass
class _Message:
    body: bytes
    routing_key: str
    headers: dict[str, Any]
    enqueued_at: float
    deliveries: int = 0


@dataclass
class _Queue:
    spec: QueueSpec
    exchange: str
    ready: asyncio.Queue[_Message] = field(default_factory=asyncio.Queue)
    exclusive: bool = False


class InMemoryBroker:
    """Queues and bindings shared by every :class:`InMemoryBus` of one process."""

    def __init__(self, topology: Topology = DEFAULT_TOPOLOGY) -> None:
        self.topology = topology
        self._queues: dict[str, _Queue] = {}
        self._names = itertools.count(1)
        self.declare(topology)

    def declare(self, topology: Topology) -> None:
        """Declare a topology's queues (idempotent)."""
        for spec in topology.service_queues.values():
            self._queues.setdefault(spec.name, _Queue(spec, topology.exchange.name))
        dead = topology.dead_queue
        self._queues.setdefault(dead.name, _Queue(dead, topology.dlx.name))

    def add_private_queue(self, bindings: Iterable[str]) -> str:
        name = f"{self.topology.prefix}.events.{next(self._names)}"
        spec = QueueSpec(name, tuple(bindings), delivery_limit=None, message_ttl_s=None)
        self._queues[name] = _Queue(spec, self.topology.exchange.name, exclusive=True)
        return name

    def remove_queue(self, name: str) -> None:
        self._queues.pop(name, None)

    def get(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise BusError(f"no such queue: {name!r}") from None

    def route(self, routing_key: str, body: bytes, headers: Mapping[str, Any]) -> None:
        targets = [
            q
            for q in self._queues.values()
            if q.exchange == self.topology.exchange.name
            and any(topic_matches(p, routing_key) for p in q.spec.bindings)
        ]
        if not targets:
            raise PublishError(f"unroutable message: no queue bound to {routing_key!r}")
        now = time.monotonic()
        for q in targets:
            q.ready.put_nowait(_Message(body, routing_key, dict(headers), now))

    def dead_letter(self, source: _Queue, msg: _Message, reason: str, detail: str = "") -> None:
        dead = self._queues[self.topology.dead_queue.name]
        headers = dict(msg.headers)
        headers.update(
            {
                REASON_HEADER: reason,
                DETAIL_HEADER: detail,
                QUEUE_HEADER: source.spec.name,
                ROUTING_KEY_HEADER: msg.routing_key,
            }
        )
        key = source.spec.dead_letter_routing_key or msg.routing_key
        dead.ready.put_nowait(_Message(msg.body, key, headers, time.monotonic()))

    def expired(self, q: _Queue, msg: _Message) -> bool:
        ttl = q.spec.message_ttl_s
        return ttl is not None and time.monotonic() - msg.enqueued_at > ttl


class _Consumer:
    def __init__(
        self,
        broker: InMemoryBroker,
        queue: _Queue,
        handler: Handler,
        prefetch: int,
        concurrency: int,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.handler = handler
        self.slots = asyncio.Semaphore(prefetch)
        self.buffer: asyncio.Queue[_Message] = asyncio.Queue()
        self.tasks = [asyncio.create_task(self._fetch())]
        self.tasks += [asyncio.create_task(self._work()) for _ in range(concurrency)]
        self.busy = 0

    async def _fetch(self) -> None:
        while True:
            await self.slots.acquire()
            msg = await self.queue.ready.get()
            if self.broker.expired(self.queue, msg):
                self.broker.dead_letter(self.queue, msg, EXPIRED_REASON)
                self.slots.release()
                continue
            self.buffer.put_nowait(msg)

    async def _work(self) -> None:
        while True:
            msg = await self.buffer.get()
            self.busy += 1
            try:
                await self._process(msg)
            finally:
                self.busy -= 1
                self.slots.release()

    async def _process(self, msg: _Message) -> None:
        msg.deliveries += 1
        delivery = Delivery(
            body=msg.body,
            routing_key=msg.routing_key,
            headers=dict(msg.headers),
            redelivered=msg.deliveries > 1,
            delivery_count=msg.deliveries,
            queue=self.queue.spec.name,
        )
        try:
            await self.handler(delivery)
        except RejectMessage as exc:
            self.broker.dead_letter(self.queue, msg, exc.reason, exc.detail)
        except asyncio.CancelledError:
            self.queue.ready.put_nowait(msg)
            raise
        except Exception as exc:  # RequeueMessage, or a handler bug: never lose the message
            if not isinstance(exc, RequeueMessage):
                log.exception("handler failed on %s; requeueing", self.queue.spec.name)
            limit = self.queue.spec.delivery_limit
            if limit is not None and msg.deliveries > limit:
                self.broker.dead_letter(self.queue, msg, DELIVERY_LIMIT_REASON, str(exc))
            else:
                self.queue.ready.put_nowait(msg)

    async def stop(self, timeout: float) -> None:
        fetcher, workers = self.tasks[0], self.tasks[1:]
        fetcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fetcher
        # Let in-flight handlers finish; whatever is still buffered goes back to the queue.
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        while not self.buffer.empty():
            self.queue.ready.put_nowait(self.buffer.get_nowait())


class InMemoryBus(Bus):
    """One service's view of an :class:`InMemoryBroker` (shared across services in one process)."""

    def __init__(
        self,
        broker: InMemoryBroker | None = None,
        *,
        topology: Topology | None = None,
        default_prefetch: int = 8,
    ) -> None:
        if broker is None:
            broker = InMemoryBroker(topology or DEFAULT_TOPOLOGY)
        elif topology is not None:
            broker.declare(topology)
        self.broker = broker
        self.default_prefetch = default_prefetch
        self._consumers: list[_Consumer] = []
        self._private: list[str] = []
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def close(self, timeout: float = 10.0) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.stop(timeout)
        for name in self._private:
            self.broker.remove_queue(name)
        self._private.clear()
        self._started = False

    def _require_started(self) -> None:
        if not self._started:
            raise BusError("bus not started")

    async def publish(
        self, routing_key: str, body: bytes, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        self._require_started()
        if not isinstance(body, bytes | bytearray | memoryview):
            raise PublishError(f"body must be bytes, got {type(body).__name__}")
        self.broker.route(routing_key, bytes(body), headers or {})

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
    ) -> None:
        self._require_started()
        q = self.broker.get(queue)
        n = max(1, prefetch or self.default_prefetch)
        self._consumers.append(_Consumer(self.broker, q, handler, n, max(1, concurrency)))

    async def consume_events(self, handler: Handler, *, bindings: Iterable[str] = ("#",)) -> str:
        self._require_started()
        name = self.broker.add_private_queue(bindings)
        self._private.append(name)
        await self.consume(name, handler)
        return name

    async def queue_depth(self, queue: str) -> int:
        return self.broker.get(queue).ready.qsize()

    def is_ready(self) -> bool:
        return self._started and all(not c.tasks[0].done() for c in self._consumers)
