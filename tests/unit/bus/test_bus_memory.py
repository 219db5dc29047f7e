"""In-memory bus specifics: shared broker across services, dead-letter headers, publish guards."""

from __future__ import annotations

import asyncio

import pytest
from federation.bus.base import Delivery, RejectMessage, dead_letter_info
from federation.bus.memory import InMemoryBroker, InMemoryBus
from federation.bus.topology import Topology
from federation.errors import BusError, PublishError


async def _until(pred, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def test_when_two_services_share_a_broker__one_closing_leaves_the_other_consuming():
    broker = InMemoryBroker()
    a, b = InMemoryBus(broker), InMemoryBus(broker)
    await a.start()
    await b.start()
    got: list[str] = []

    async def on(d: Delivery) -> None:
        got.append(d.routing_key)

    await b.consume("pdmfed.security", on)
    await a.close()
    await b.publish("update.raw", b"x")
    await _until(lambda: got == ["update.raw"])
    with pytest.raises(BusError, match="not started"):
        await a.publish("update.raw", b"x")
    await b.close()


async def test_when_body_is_not_bytes__publish_raises_publish_error():
    bus = InMemoryBus()
    await bus.start()
    with pytest.raises(PublishError):
        await bus.publish("update.raw", {"not": "bytes"})  # type: ignore[arg-type]
    await bus.close()


async def test_when_dead_lettered__original_headers_survive_next_to_the_reason():
    bus = InMemoryBus(topology=Topology(prefix="m"))
    await bus.start()

    async def reject(d: Delivery) -> None:
        raise RejectMessage("replay")

    dead: list[Delivery] = []

    async def on_dead(d: Delivery) -> None:
        dead.append(d)

    await bus.consume("m.connector", reject)
    await bus.consume("m.dead", on_dead)
    await bus.publish("train.request", b"x", headers={"trace": "t1"})
    await _until(lambda: len(dead) == 1)
    assert dead[0].headers["trace"] == "t1"
    assert dead[0].routing_key == "dead.connector"
    assert dead_letter_info(dead[0]).reason == "replay"
    await bus.close()


def test_when_a_delivery_has_no_reason_headers__dead_letter_info_says_unknown():
    info = dead_letter_info(Delivery(body=b"", routing_key="x.y"))
    assert (info.reason, info.routing_key) == ("unknown", "x.y")


def test_when_the_broker_dead_lettered__reason_comes_from_x_death():
    headers = {"x-death": [{"reason": "expired", "queue": "q", "routing-keys": ["round.open"]}]}
    info = dead_letter_info(Delivery(body=b"", routing_key="dead.q", headers=headers))
    assert (info.reason, info.queue, info.routing_key) == ("expired", "q", "round.open")
