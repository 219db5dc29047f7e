"""SecureEndpoint over both backends: only verified, fresh, typed messages reach a handler."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch
from bus_helpers import BusFactory, wait_for
from federation.bus.base import Delivery, dead_letter_info
from federation.bus.middleware import SecureEndpoint
from federation.crypto.keys import KeyRing
from federation.crypto.sealer import Sealer
from federation.crypto.signing import SigningIdentity, TrustStore
from federation.errors import StaleRoundError
from federation.monitoring.metrics import Metrics
from federation.wire.envelope import decode_envelope
from federation.wire.messages import MsgType, RoundOpen, UpdateRaw
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(60)

SENDER = "connector-0"
#: The consumer's sender roles: this connector replica may send update.raw.
ROLES = {SENDER: "connector"}


class Pair:
    """A publishing endpoint (connector) and a consuming one (security) on one topology."""

    def __init__(self, buses: BusFactory, *, max_message_bytes: int = 8 * 1024 * 1024) -> None:
        self.buses = buses
        keyring = KeyRing("k1", {"k1": os.urandom(32)})
        identity = SigningIdentity.generate(SENDER)
        trust = TrustStore({SENDER: identity.public_bytes()})
        self.out_sealer = Sealer(
            keyring, sender=SENDER, identity=identity, max_message_bytes=max_message_bytes
        )
        self.in_sealer = Sealer(
            keyring,
            sender="security-0",
            trust=trust,
            require_signature=True,
            max_message_bytes=max_message_bytes,
        )
        self.registry = CollectorRegistry()
        self.handled: list[tuple[object, object, object]] = []
        self.dead: list[Delivery] = []

    async def start(self, handler=None, **kw) -> None:
        self.bus = await self.buses.make()
        self.sender = SecureEndpoint(self.bus, self.out_sealer, None, "connector")
        self.receiver = SecureEndpoint(
            self.bus,
            self.in_sealer,
            Metrics("security", self.registry),
            "security",
            roles=ROLES,
            **kw,
        )

        async def record(msg_type, payload, envelope) -> None:
            self.handled.append((msg_type, payload, envelope))

        async def on_dead(d: Delivery) -> None:
            self.dead.append(d)

        await self.receiver.subscribe(self.buses.topology.queue("security").name, handler or record)
        await self.bus.consume(self.buses.topology.dead_queue.name, on_dead)

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "pdmfed_messages_rejected_total", {"service": "security", "reason": reason}
        )
        return value or 0.0

    def consumed(self, msg_type: str) -> float:
        value = self.registry.get_sample_value(
            "pdmfed_messages_consumed_total", {"service": "security", "msg_type": msg_type}
        )
        return value or 0.0


def _update(n: int = 8, round_num: int = 3) -> UpdateRaw:
    return UpdateRaw(
        campaign_id="c1",
        round_num=round_num,
        datasite_id="site-a",
        model_version=2,
        delta={"w": torch.arange(n, dtype=torch.float32)},
        num_samples=10,
    )


async def test_when_a_valid_message_is_published__the_handler_gets_it_typed_exactly_once(
    buses: BusFactory,
):
    pair = Pair(buses)
    await pair.start()
    await pair.sender.publish(MsgType.UPDATE_RAW, _update(), datasite_id="site-a", round_num=3)
    await wait_for(lambda: len(pair.handled) == 1)
    await asyncio.sleep(0.2)
    assert len(pair.handled) == 1
    msg_type, payload, envelope = pair.handled[0]
    assert msg_type is MsgType.UPDATE_RAW
    assert isinstance(payload, UpdateRaw)
    assert torch.equal(payload.delta["w"], torch.arange(8, dtype=torch.float32))
    assert (envelope.sender, envelope.round_num) == (SENDER, 3)
    assert pair.consumed("update.raw") == 1
    assert pair.dead == []


async def test_when_one_ciphertext_byte_is_flipped__message_is_rejected_as_integrity(
    buses: BusFactory,
):
    pair = Pair(buses)
    await pair.start()
    (body,) = pair.out_sealer.seal("update.raw", _update())
    ct = bytes(decode_envelope(body).encrypted_data)
    at = body.index(ct) + len(ct) // 3
    tampered = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]
    await pair.bus.publish("update.raw", tampered)
    await wait_for(lambda: len(pair.dead) == 1)
    assert dead_letter_info(pair.dead[0]).reason == "integrity"
    assert pair.rejected("integrity") == 1
    assert pair.handled == []


async def test_when_a_captured_body_is_published_again__the_copy_is_rejected_as_replay(
    buses: BusFactory,
):
    pair = Pair(buses)
    await pair.start()
    (body,) = pair.out_sealer.seal("update.raw", _update())
    await pair.bus.publish("update.raw", body)
    await wait_for(lambda: len(pair.handled) == 1)
    await pair.bus.publish("update.raw", body)
    await wait_for(lambda: len(pair.dead) == 1)
    assert dead_letter_info(pair.dead[0]).reason == "replay"
    assert pair.rejected("replay") == 1
    assert len(pair.handled) == 1


async def test_when_the_handler_fails_once__the_redelivery_is_processed_not_taken_for_replay(
    buses: BusFactory,
):
    pair = Pair(buses)
    calls: list[int] = []

    async def flaky(msg_type, payload, envelope) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("datasite went away")
        pair.handled.append((msg_type, payload, envelope))

    await pair.start(flaky)
    await pair.sender.publish(MsgType.UPDATE_RAW, _update())
    await wait_for(lambda: len(pair.handled) == 1)
    assert len(calls) == 2
    assert pair.rejected("replay") == 0 and pair.dead == []
    assert pair.consumed("update.raw") == 1


async def test_when_body_is_garbage_or_bound_to_another_type__it_is_rejected_as_malformed(
    buses: BusFactory,
):
    pair = Pair(buses)
    await pair.start()
    await pair.bus.publish("update.raw", b"\xc1 not msgpack at all")
    # A genuine round.open body, re-published under a routing key it was not sealed for.
    (body,) = pair.out_sealer.seal(
        "round.open", RoundOpen(campaign_id="c", round_num=1, model_version=1)
    )
    await pair.bus.publish("update.raw", body)
    await wait_for(lambda: len(pair.dead) == 2)
    assert [dead_letter_info(d).reason for d in pair.dead] == ["malformed", "malformed"]
    assert pair.rejected("malformed") == 2
    assert pair.handled == []


async def test_when_round_guard_or_handler_says_stale__message_is_rejected_as_stale_round(
    buses: BusFactory,
):
    pair = Pair(buses)

    def guard(msg_type: str, payload) -> None:
        if getattr(payload, "round_num", None) == 1:
            raise StaleRoundError("round 1 is closed")

    async def handler(msg_type, payload, envelope) -> None:
        if payload.round_num == 2:
            raise StaleRoundError("round 2 closed while this was in flight")
        pair.handled.append((msg_type, payload, envelope))

    await pair.start(handler, round_guard=guard)
    for r in (1, 2, 3):
        await pair.sender.publish(MsgType.UPDATE_RAW, _update(round_num=r))
    await wait_for(lambda: len(pair.dead) == 2 and len(pair.handled) == 1)
    assert {dead_letter_info(d).reason for d in pair.dead} == {"stale_round"}
    assert pair.rejected("stale_round") == 2
    assert pair.handled[0][1].round_num == 3


async def test_when_a_message_exceeds_the_size_limit__it_travels_in_chunks_and_arrives_whole(
    buses: BusFactory,
):
    pair = Pair(buses, max_message_bytes=64 * 1024)
    failed: list[int] = []

    async def fail_first(msg_type, payload, envelope) -> None:
        if not failed:
            failed.append(1)
            raise TimeoutError("aggregator busy")
        pair.handled.append((msg_type, payload, envelope))

    await pair.start(fail_first)
    n = 100_000  # 400 kB of float32: 7 chunks of at most 64 KiB
    chunks = await pair.sender.publish(MsgType.UPDATE_RAW, _update(n))
    assert chunks >= 7
    await wait_for(lambda: len(pair.handled) == 1)
    payload = pair.handled[0][1]
    assert torch.equal(payload.delta["w"], torch.arange(n, dtype=torch.float32))
    assert pair.dead == [] and pair.consumed("update.raw") == 1
