"""The Bus contract, run against the in-memory bus and a real RabbitMQ by one fixture."""

from __future__ import annotations

import asyncio

import pytest
from bus_helpers import AMQP_URL, RABBIT_UP, BusFactory, unique_topology, wait_for
from federation.bus.base import Delivery, RejectMessage, RequeueMessage, dead_letter_info
from federation.errors import BusError, PublishError

pytestmark = pytest.mark.timeout(60)


def _collector() -> tuple[list[Delivery], object]:
    got: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery)

    return got, handler


async def test_when_published__the_bound_queue_delivers_body_and_headers_once(buses: BusFactory):
    bus = await buses.make()
    got, handler = _collector()
    await bus.consume(buses.topology.queue("connector").name, handler)
    await bus.publish("train.request", b"\x00payload\xff", headers={"x-test": "yes"})
    await wait_for(lambda: len(got) == 1)
    await asyncio.sleep(0.2)
    assert len(got) == 1
    d = got[0]
    assert d.body == b"\x00payload\xff"
    assert d.routing_key == "train.request"
    assert d.headers["x-test"] == "yes"
    assert d.redelivered is False and d.delivery_count == 1
    assert d.queue == buses.topology.queue("connector").name


async def test_when_routing_key_matches_several_bindings__each_queue_gets_a_copy(
    buses: BusFactory,
):
    bus = await buses.make()
    topo = buses.topology
    seen: dict[str, list[str]] = {s: [] for s in ("aggregator", "trainer-dispatch", "security")}
    for service, keys in seen.items():

        async def handler(d: Delivery, keys: list[str] = keys) -> None:
            keys.append(d.routing_key)

        await bus.consume(topo.queue(service).name, handler)
    events, on_event = _collector()
    await bus.consume_events(on_event, bindings=("update.*",))
    await bus.publish("round.close", b"c")
    await bus.publish("update.raw", b"u")
    await wait_for(lambda: len(seen["aggregator"]) == 1 and len(seen["security"]) == 2)
    await wait_for(lambda: len(events) == 1)
    await asyncio.sleep(0.2)
    assert seen["aggregator"] == ["round.close"]
    assert seen["trainer-dispatch"] == []
    assert seen["security"] == ["round.close", "update.raw"]
    assert [e.routing_key for e in events] == ["update.raw"]


async def test_when_handler_rejects__message_is_dead_lettered_with_its_reason(buses: BusFactory):
    bus = await buses.make()
    topo = buses.topology

    async def reject(d: Delivery) -> None:
        raise RejectMessage("integrity", "tag mismatch")

    dead, on_dead = _collector()
    await bus.consume(topo.queue("security").name, reject)
    await bus.consume(topo.dead_queue.name, on_dead)
    await bus.publish("update.raw", b"tampered")
    await wait_for(lambda: len(dead) == 1)
    info = dead_letter_info(dead[0])
    assert dead[0].body == b"tampered"
    assert (info.reason, info.detail) == ("integrity", "tag mismatch")
    assert info.queue == topo.queue("security").name
    assert info.routing_key == "update.raw"
    await asyncio.sleep(0.2)
    assert await bus.queue_depth(topo.queue("security").name) == 0


async def test_when_delivery_limit_exceeded__message_is_dead_lettered(buses: BusFactory):
    bus = await buses.make()
    topo = buses.topology  # delivery_limit=2: delivered 3 times in all
    attempts: list[tuple[bool, int]] = []

    async def flaky(d: Delivery) -> None:
        attempts.append((d.redelivered, d.delivery_count))
        raise RequeueMessage("datasite busy")

    dead, on_dead = _collector()
    await bus.consume(topo.queue("connector").name, flaky)
    await bus.consume(topo.dead_queue.name, on_dead)
    await bus.publish("train.request", b"job")
    await wait_for(lambda: len(dead) == 1)
    assert attempts == [(False, 1), (True, 2), (True, 3)]
    info = dead_letter_info(dead[0])
    assert info.reason == "delivery_limit"
    assert info.routing_key == "train.request"


async def test_when_nothing_is_bound__publish_raises_publish_error(buses: BusFactory):
    bus = await buses.make()
    with pytest.raises(PublishError, match="unroutable"):
        await bus.publish("no.such.type", b"x")
    # The bus is still usable afterwards.
    got, handler = _collector()
    await bus.consume(buses.topology.queue("connector").name, handler)
    await bus.publish("train.request", b"ok")
    await wait_for(lambda: len(got) == 1)


async def test_when_handler_raises_a_bug__consumer_survives_and_message_is_retried(
    buses: BusFactory,
):
    bus = await buses.make()
    handled: list[bytes] = []
    failed_once: set[bytes] = set()

    async def buggy(d: Delivery) -> None:
        if d.body == b"first" and d.body not in failed_once:
            failed_once.add(d.body)
            raise ValueError("handler bug")
        handled.append(d.body)

    await bus.consume(buses.topology.queue("trainer-dispatch").name, buggy)
    await bus.publish("datasite.status", b"first")
    await bus.publish("datasite.status", b"second")
    await wait_for(lambda: sorted(handled) == [b"first", b"second"])
    assert bus.is_ready()


async def test_when_prefetch_is_two__only_two_messages_leave_the_queue(buses: BusFactory):
    bus = await buses.make()
    queue = buses.topology.queue("aggregator").name
    release = asyncio.Event()
    started: list[bytes] = []

    async def slow(d: Delivery) -> None:
        started.append(d.body)
        await release.wait()

    for i in range(5):
        await bus.publish("update.rejected", b"%d" % i)
    await wait_for_depth(bus, queue, 5)
    await bus.consume(queue, slow, prefetch=2, concurrency=2)
    await wait_for(lambda: len(started) == 2)
    await wait_for_depth(bus, queue, 3)
    release.set()
    await wait_for(lambda: len(started) == 5)
    await wait_for_depth(bus, queue, 0)


async def wait_for_depth(bus, queue: str, n: int) -> None:
    for _ in range(200):
        if await bus.queue_depth(queue) == n:
            return
        await asyncio.sleep(0.05)
    assert await bus.queue_depth(queue) == n


async def test_when_queue_is_unknown__consume_and_depth_raise_bus_error(buses: BusFactory):
    bus = await buses.make()
    _, handler = _collector()
    with pytest.raises(BusError):
        await bus.queue_depth("no-such-queue-here")
    with pytest.raises(BusError):
        await bus.consume("no-such-queue-here", handler)


async def test_when_closed__bus_is_not_ready_and_unacked_messages_stay_queued(buses: BusFactory):
    bus = await buses.make()
    queue = buses.topology.queue("connector").name
    block = asyncio.Event()
    got: list[Delivery] = []

    async def hold(d: Delivery) -> None:
        got.append(d)
        if d.body == b"hold":
            await block.wait()

    await bus.consume(queue, hold)
    assert bus.is_ready()
    await bus.publish("train.request", b"hold")
    await wait_for(lambda: len(got) == 1)
    closing = asyncio.create_task(bus.close(timeout=0.3))
    await closing
    assert not bus.is_ready()
    # The unfinished message is back in the queue for another consumer.
    other = await buses.make()
    again, handler = _collector()
    await other.consume(queue, handler)
    await wait_for(lambda: len(again) == 1)
    assert again[0].body == b"hold" and again[0].redelivered


@pytest.mark.integration
@pytest.mark.skipif(not RABBIT_UP, reason="RabbitMQ not reachable")
async def test_when_broker_connection_is_cut_and_restored__consumer_resumes(proxy):
    factory = BusFactory("rabbitmq", unique_topology())
    try:
        direct = await factory.make(service="publisher")
        via_proxy = await factory.make(service="consumer", url=proxy.url(AMQP_URL))
        got, handler = _collector()
        await via_proxy.consume(factory.topology.queue("connector").name, handler)
        await direct.publish("train.request", b"before")
        await wait_for(lambda: len(got) == 1)

        await proxy.cut()
        await wait_for(lambda: not via_proxy.is_ready(), timeout=10)
        await direct.publish("train.request", b"during")
        await asyncio.sleep(0.5)
        await proxy.restore()

        await wait_for(lambda: [d.body for d in got][-1:] == [b"during"], timeout=20)
        await wait_for(via_proxy.is_ready, timeout=10)
        await via_proxy.publish("train.request", b"after")
        await wait_for(lambda: [d.body for d in got].count(b"after") == 1, timeout=10)
    finally:
        await factory.cleanup()


@pytest.mark.parametrize(
    "backend", ["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)]
)
async def test_when_message_outlives_the_queue_ttl__it_is_dead_lettered_as_expired(backend: str):
    if backend == "rabbitmq" and not RABBIT_UP:
        pytest.skip("RabbitMQ not reachable")
    factory = BusFactory(backend, unique_topology(message_ttl_s=0.2))
    try:
        bus = await factory.make()
        await bus.publish("train.request", b"late")
        await asyncio.sleep(0.5)
        dead, on_dead = _collector()
        got, handler = _collector()
        await bus.consume(factory.topology.dead_queue.name, on_dead)
        await bus.consume(factory.topology.queue("connector").name, handler)
        await wait_for(lambda: len(dead) == 1)
        assert got == []
        assert dead_letter_info(dead[0]).reason == "expired"
    finally:
        await factory.cleanup()
