"""An attacker with broker access: replays that pretend to be redeliveries, on both backends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

import msgpack
import pytest
import torch
from bus_helpers import BusFactory, wait_for
from federation.bus.base import Delivery, dead_letter_info
from federation.bus.middleware import SecureEndpoint
from federation.campaign import CampaignConfig
from federation.crypto.keys import KeyRing
from federation.crypto.replay import InMemorySeenStore, RedisSeenStore, ReplayGuard
from federation.crypto.sealer import Sealer
from federation.crypto.signing import SigningIdentity, TrustStore
from federation.ml.limits import max_update_bytes
from federation.monitoring.metrics import Metrics
from federation.wire import codec, messages
from federation.wire.chunking import chunk_bounds
from federation.wire.messages import MsgType, UpdateRaw
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(90)

REDIS_URL = os.environ.get("PDMFED_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SENDER = "connector-0"
#: The consumer's sender roles: two connector replicas (one hostile) and the orchestrator.
ROLES = {SENDER: "connector", "mallory": "connector", "orchestrator": "orchestrator"}
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
            self.bus, self.sealer, Metrics("security", self.registry), "security", roles=ROLES
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
    reserved = []
    reserve = restarted.sealer.assembler.reserve
    restarted.sealer.assembler.reserve = lambda *a, **kw: reserved.append(a) or reserve(*a, **kw)
    await restarted.start()
    await publisher.publish("update.raw", bodies[0], headers=FAKE_REDELIVERY)
    await wait_for(lambda: len(restarted.dead) == 1)
    assert dead_letter_info(restarted.dead[0]).reason == "replay"
    assert reserved == [], "a replayed chunk booked a reassembly slot"
    assert restarted.sealer.assembler.pending == 0
    assert restarted.handled == [] and restarted.rejected("replay") == 1


class CountingSealer(Sealer):
    """A sealer that counts how often a body was opened (one delivery = one open)."""

    opens = 0

    def open(self, body, **kw):
        self.opens += 1
        return super().open(body, **kw)


def _seal_plaintext(sealer: Sealer, msg_type: str, plaintext: bytes) -> bytes:
    """What a holder of a service key can do: seal any plaintext, valid payload or not."""
    return sealer._seal_body(MsgType(msg_type), [plaintext], len(plaintext), "", 0, None, None)


def _hostile_payload() -> bytes:
    """A payload whose tensor descriptor [0, 2**62, 2**62] overflows torch's strides."""
    desc = msgpack.packb(["float32", [0, 2**62, 2**62], 0, 0])
    structure = msgpack.packb({"delta": {"w": msgpack.ExtType(codec.TENSOR_EXT, desc)}})
    head = bytearray(b"\x93\xc6") + len(structure).to_bytes(4, "big") + structure
    pad = -(len(head) + 7) % 64
    return bytes(head + b"\xc4" + bytes([pad]) + bytes(pad) + b"\xc6" + bytes(4))


async def test_when_a_key_holder_sends_an_undecodable_tensor__it_is_malformed_on_first_sight(
    buses: BusFactory, keys
):
    keyring, identity, trust = keys
    consumer = Consumer(buses, keyring, trust, InMemorySeenStore())
    consumer.sealer.__class__ = CountingSealer
    await consumer.start()
    publisher = await buses.make(service="attacker")
    sealer = Sealer(keyring, sender=SENDER, identity=identity)
    await publisher.publish("update.raw", _seal_plaintext(sealer, "update.raw", _hostile_payload()))
    (good,) = sealer.seal("update.raw", _update(8))
    await publisher.publish("update.raw", good)
    await wait_for(lambda: len(consumer.dead) == 1 and len(consumer.handled) == 1)
    await asyncio.sleep(0.3)
    assert dead_letter_info(consumer.dead[0]).reason == "malformed"
    assert consumer.sealer.opens == 2, "the poison message was requeued instead of refused"
    assert consumer.rejected("malformed") == 1


async def test_when_payload_validation_fails_untyped__the_message_is_malformed_on_first_sight(
    buses: BusFactory, keys, monkeypatch
):
    def broken(msg_type, payload):
        raise ValueError("a validator bug or an input nobody foresaw")

    monkeypatch.setattr(messages, "parse_payload", broken)
    keyring, identity, trust = keys
    consumer = Consumer(buses, keyring, trust, InMemorySeenStore())
    consumer.sealer.__class__ = CountingSealer
    await consumer.start()
    publisher = await buses.make(service="attacker")
    (body,) = Sealer(keyring, sender=SENDER, identity=identity).seal("update.raw", _update(8))
    await publisher.publish("update.raw", body)
    await wait_for(lambda: len(consumer.dead) == 1)
    await asyncio.sleep(0.3)
    assert dead_letter_info(consumer.dead[0]).reason == "malformed"
    assert consumer.sealer.opens == 1 and consumer.rejected("malformed") == 1


async def test_when_the_shared_seen_store_is_briefly_unreachable__the_message_waits_not_dies(
    buses: BusFactory, keys
):
    """Fail closed (nothing is accepted unchecked) but never dead-letter a valid message."""
    import redis
    from bus_helpers import TcpProxy

    host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
    try:
        redis.Redis(host=host, port=int(port), socket_connect_timeout=2).ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"Redis is unreachable at {REDIS_URL}: {exc}")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    namespace = f"pdmfed:test:{uuid.uuid4().hex}"
    store = RedisSeenStore(f"redis://127.0.0.1:{proxy.port}/0", namespace)
    keyring, identity, trust = keys
    consumer = Consumer(buses, keyring, trust, store)
    try:
        await consumer.start()
        consumer.endpoint.store_retry_s = 0.3
        publisher = await buses.make(service="connector")
        (body,) = Sealer(keyring, sender=SENDER, identity=identity).seal("update.raw", _update(8))
        await proxy.cut()
        await publisher.publish("update.raw", body)
        await asyncio.sleep(0.5)
        assert consumer.handled == [] and consumer.dead == []
        await proxy.restore()
        await wait_for(lambda: len(consumer.handled) == 1)
        assert consumer.dead == [] and consumer.rejected("bus") == 0
    finally:
        await proxy.cut()
        store.close()
        client = redis.Redis(host=host, port=int(port))
        keys_left = list(client.scan_iter(f"{namespace}:*"))
        if keys_left:
            client.delete(*keys_left)
        client.close()


# --- chunk reassembly: one sender (a stolen key) never blocks another ----------------------


def _claim(sealer: Sealer, size: int, total: int) -> bytes:
    """A genuinely signed first chunk claiming an update of ``size`` bytes."""
    start, end = chunk_bounds(size, total, 0)
    plaintext = os.urandom(end - start)
    chunk = {"update_id": os.urandom(16), "index": 0, "total": total, "size": size,
             "sha256_all": "0" * 64}  # fmt: skip
    digest = hashlib.sha256(plaintext).hexdigest()
    return sealer._seal_body(MsgType.UPDATE_RAW, [plaintext], len(plaintext), "", 0, chunk, digest)


def _refusals(consumer: Consumer, sender: str, reason: str) -> float:
    value = consumer.registry.get_sample_value(
        "pdmfed_reassembly_refusals_total",
        {"service": "security", "sender": sender, "reason": reason},
    )
    return value or 0.0


@pytest.fixture
def two_senders():
    keyring = KeyRing("k1", {"k1": os.urandom(32)})
    ids = {n: SigningIdentity.generate(n) for n in (SENDER, "mallory", "orchestrator")}
    trust = TrustStore({n: i.public_bytes() for n, i in ids.items()})
    limit = 64 * 1024
    sealers = {
        n: Sealer(keyring, sender=n, identity=i, max_message_bytes=limit) for n, i in ids.items()
    }
    return keyring, trust, sealers, limit


async def test_when_a_campaign_started__a_claim_beyond_its_model_is_refused_and_others_arrive(
    buses: BusFactory, two_senders
):
    keyring, trust, sealers, limit = two_senders
    consumer = Consumer(buses, keyring, trust, InMemorySeenStore(), max_message_bytes=limit)
    await consumer.start()
    publisher = await buses.make(service="orchestrator")
    config = CampaignConfig(campaign_id="c1").to_payload()
    (start,) = sealers["orchestrator"].seal(
        "campaign.start", {"campaign_id": "c1", "config": config}
    )
    await publisher.publish("campaign.start", start)
    await wait_for(lambda: len(consumer.handled) == 1)
    cap = max_update_bytes(CampaignConfig(campaign_id="c1"))
    assert consumer.sealer.assembler.max_update_bytes == cap < 8 * 1024 * 1024

    await publisher.publish("update.raw", _claim(sealers["mallory"], 2 * 1024**3, 65536))
    for body in sealers[SENDER].seal("update.raw", _update(100_000)):
        await publisher.publish("update.raw", body)
    await wait_for(lambda: len(consumer.handled) == 2 and len(consumer.dead) == 1)
    assert dead_letter_info(consumer.dead[0]).reason == "oversize"
    assert _refusals(consumer, "mallory", "oversize") == 1
    assert _refusals(consumer, SENDER, "oversize") == 0
    assert consumer.sealer.assembler.pending == 0


async def test_when_a_claim_is_never_completed__a_timer_drops_it_and_counts_its_sender(
    buses: BusFactory, two_senders
):
    keyring, trust, sealers, limit = two_senders
    consumer = Consumer(buses, keyring, trust, InMemorySeenStore(), max_message_bytes=limit)
    consumer.sealer.assembler.timeout_s = 0.3
    await consumer.start()
    publisher = await buses.make(service="attacker")
    await publisher.publish("update.raw", _claim(sealers["mallory"], 10 * 1024 * 1024, 200))
    await wait_for(lambda: consumer.sealer.assembler.pending == 1)
    await wait_for(lambda: _refusals(consumer, "mallory", "expired") == 1, timeout=5.0)
    assert consumer.sealer.assembler.pending == 0 and consumer.sealer.assembler.inflight_bytes == 0
