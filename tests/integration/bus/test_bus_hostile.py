"""An attacker with broker access: replays that pretend to be redeliveries, on both backends."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import torch
from bus_helpers import BusFactory, wait_for
from federation.bus.base import Delivery, dead_letter_info
from federation.bus.middleware import SecureEndpoint
from federation.crypto.keys import KeyRing
from federation.crypto.replay import InMemorySeenStore, RedisSeenStore, ReplayGuard
from federation.crypto.sealer import Sealer
from federation.crypto.signing import SigningIdentity, TrustStore
from federation.monitoring.metrics import Metrics
from federation.wire.messages import UpdateRaw
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(90)

REDIS_URL = os.environ.get("PDMFED_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SENDER = "connector-0"
#: Headers an attacker adds to a captured body so that it looks like a broker redelivery.
FAKE_REDELIVERY = {"x-delivery-count": 3, "x-death": [], "x-redelivered": True}


@pytest.fixture
def seen_store():
    """A seen-id store that outlives a consumer (Redis, as replicas share it); cleaned up."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"Redis is unreachable at {REDIS_URL}: {exc}")
    namespace = f"pdmfed:test:{uuid.uuid4().hex}"
    store = RedisSeenStore(REDIS_URL, namespace)
    yield store
    store.close()
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


class Consumer:
    """One consumer process of the security service: its own sealer, endpoint and records."""

    def __init__(self, buses: BusFactory, keyring: KeyRing, trust: TrustStore, store, **kw) -> None:
        self.buses = buses
        self.sealer = Sealer(
            keyring, sender="security-0", trust=trust, replay=ReplayGuard(store, 630.0), **kw
        )
        self.registry = CollectorRegistry()
        self.handled: list[object] = []
        self.dead: list[Delivery] = []

    async def start(self) -> None:
        self.bus = await self.buses.make(service="security")
        self.endpoint = SecureEndpoint(
            self.bus, self.sealer, Metrics("security", self.registry), "security"
        )

        async def record(msg_type, payload, envelope) -> None:
            self.handled.append(payload)

        async def on_dead(d: Delivery) -> None:
            self.dead.append(d)

        await self.endpoint.subscribe(self.buses.topology.queue("security").name, record)
        await self.bus.consume(self.buses.topology.dead_queue.name, on_dead)

    async def stop(self) -> None:
        await self.bus.close(timeout=2.0)

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "pdmfed_messages_rejected_total", {"service": "security", "reason": reason}
        )
        return value or 0.0


def _update(n: int) -> UpdateRaw:
    return UpdateRaw(
        campaign_id="c1",
        round_num=3,
        datasite_id="site-a",
        model_version=2,
        delta={"w": torch.arange(n, dtype=torch.float32)},
        num_samples=10,
    )


@pytest.fixture
def keys():
    identity = SigningIdentity.generate(SENDER)
    keyring = KeyRing("k1", {"k1": os.urandom(32)})
    return keyring, identity, TrustStore({SENDER: identity.public_bytes()})


async def test_when_a_captured_body_is_republished_with_a_delivery_count_header__it_is_a_replay(
    buses: BusFactory, keys
):
    keyring, identity, trust = keys
    consumer = Consumer(buses, keyring, trust, InMemorySeenStore())
    await consumer.start()
    publisher = await buses.make(service="attacker")
    (body,) = Sealer(keyring, sender=SENDER, identity=identity).seal("update.raw", _update(8))
    await publisher.publish("update.raw", body)
    await wait_for(lambda: len(consumer.handled) == 1)
    await publisher.publish("update.raw", body, headers=FAKE_REDELIVERY)
    await wait_for(lambda: len(consumer.dead) == 1)
    await asyncio.sleep(0.2)
    assert len(consumer.handled) == 1, "the handler ran again for one genuine message"
    assert dead_letter_info(consumer.dead[0]).reason == "replay"
    assert consumer.rejected("replay") == 1


async def test_when_a_captured_chunk_is_republished_after_a_consumer_restart__it_books_nothing(
    buses: BusFactory, keys, seen_store
):
    keyring, identity, trust = keys
    limit = 64 * 1024
    first = Consumer(buses, keyring, trust, seen_store, max_message_bytes=limit)
    await first.start()
    publisher = await buses.make(service="attacker")
    bodies = Sealer(keyring, sender=SENDER, identity=identity, max_message_bytes=limit).seal(
        "update.raw", _update(100_000)
    )
    assert len(bodies) >= 7
    for body in bodies:
        await publisher.publish("update.raw", body)
    await wait_for(lambda: len(first.handled) == 1)
    await first.stop()

    restarted = Consumer(buses, keyring, trust, seen_store, max_message_bytes=limit)
    await restarted.start()
    await publisher.publish("update.raw", bodies[0], headers=FAKE_REDELIVERY)
    await wait_for(lambda: len(restarted.dead) == 1)
    assert dead_letter_info(restarted.dead[0]).reason == "replay"
    assert restarted.sealer.assembler.pending == 0, "a replayed chunk booked a reassembly slot"
    assert restarted.handled == [] and restarted.rejected("replay") == 1
