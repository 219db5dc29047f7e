"""SecureEndpoint: pipelined chunk publishing; sealing/opening on the loop or in a thread."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from federation.bus import middleware
from federation.bus.base import Delivery
from federation.bus.memory import InMemoryBus
from federation.bus.middleware import SecureEndpoint
from federation.bus.topology import Topology
from federation.crypto import KeyRing, ReplayGuard, Sealer, SigningIdentity, TrustStore
from federation.errors import PublishError
from federation.monitoring.metrics import Metrics
from federation.wire.messages import MsgType, UpdateRaw
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(30)

SENDER = "connector-0"
#: The consumer's sender roles: this connector replica may send update.raw.
ROLES = {SENDER: "connector"}


class _SlowBus:
    """Records publishes; each waits ``delay`` (a pending confirm); can fail the n-th one."""

    def __init__(self, delay: float = 0.02, fail_at: int | None = None) -> None:
        self.delay = delay
        self.fail_at = fail_at
        self.bodies: list[bytes] = []
        self.inflight = 0
        self.max_inflight = 0

    async def publish(
        self, routing_key: str, body: bytes, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        index = len(self.bodies)
        self.bodies.append(body)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.delay)
            if index == self.fail_at:
                raise PublishError("broker refused message")
        finally:
            self.inflight -= 1


def _sealers(max_message_bytes: int) -> tuple[Sealer, Sealer]:
    ring = KeyRing("k1", {"k1": os.urandom(32)})
    ident = SigningIdentity.generate(SENDER)
    trust = TrustStore({SENDER: ident.public_bytes()})
    out = Sealer(ring, sender=SENDER, identity=ident, max_message_bytes=max_message_bytes)
    inn = Sealer(ring, sender="security-0", trust=trust, max_message_bytes=max_message_bytes)
    return out, inn


def _update(n: int) -> UpdateRaw:
    return UpdateRaw(
        campaign_id="c1",
        round_num=1,
        datasite_id="site-a",
        model_version=0,
        delta={"w": torch.arange(n, dtype=torch.float32)},
        num_samples=10,
    )


async def test_when_a_message_is_chunked__chunks_overlap_in_flight_up_to_the_window():
    out, inn = _sealers(16 * 1024)
    bus = _SlowBus()
    endpoint = SecureEndpoint(bus, out, None, "connector", publish_window=3)  # type: ignore[arg-type]
    count = await endpoint.publish(MsgType.UPDATE_RAW, _update(40_000))
    assert count == len(bus.bodies) >= 8
    assert bus.max_inflight == 3  # pipelined, and never more than the window
    opened = [inn.open(b) for b in bus.bodies]
    assert torch.equal(opened[-1].payload["delta"]["w"], torch.arange(40_000, dtype=torch.float32))


async def test_when_a_chunk_publish_fails__publish_raises_and_stops_sealing_the_rest():
    out, _ = _sealers(16 * 1024)
    bus = _SlowBus(delay=0.05, fail_at=1)
    endpoint = SecureEndpoint(bus, out, None, "connector", publish_window=2)  # type: ignore[arg-type]
    total = out.prepare("update.raw", _update(40_000).to_payload()).count
    with pytest.raises(PublishError):
        await endpoint.publish(MsgType.UPDATE_RAW, _update(40_000))
    assert 2 <= len(bus.bodies) < total
    assert bus.inflight == 0  # every started publish finished before publish() returned


@pytest.mark.parametrize("inline", [0, 1 << 30], ids=["worker-thread", "inline"])
async def test_when_sealing_and_opening_inline_or_in_a_thread__handlers_get_the_same_message(
    inline: int,
):
    out, inn = _sealers(8 * 1024 * 1024)
    bus = InMemoryBus(topology=Topology(prefix="p"))
    await bus.start()
    registry = CollectorRegistry()
    sender = SecureEndpoint(bus, out, None, "connector", inline_seal_bytes=inline)
    receiver = SecureEndpoint(
        bus, inn, Metrics("security", registry), "security", roles=ROLES, inline_open_bytes=inline
    )
    got: list[Any] = []

    async def handler(msg_type, payload, envelope) -> None:
        got.append(payload)

    await receiver.subscribe("p.security", handler)
    for _ in range(3):
        assert await sender.publish(MsgType.UPDATE_RAW, _update(1000)) == 1
    for _ in range(200):
        if len(got) == 3:
            break
        await asyncio.sleep(0.01)
    await bus.close()
    assert len(got) == 3
    assert all(torch.equal(p.delta["w"], torch.arange(1000, dtype=torch.float32)) for p in got)
    consumed = registry.get_sample_value(
        "pdmfed_messages_consumed_total", {"service": "security", "msg_type": "update.raw"}
    )
    assert consumed == 3


def test_when_sizing_a_payload_to_choose_loop_or_thread__tensors_and_bytes_count():
    import numpy as np
    from federation.wire.codec import rough_nbytes as rough

    payload = {"delta": {"w": torch.zeros(1000), "b": np.zeros(10)}, "blob": b"x" * 100}
    assert rough(payload, 1 << 20) == 4000 + 80 + 100 + 0
    assert rough({"a": [torch.zeros(1 << 20)] * 8}, 1000) > 1000  # stops once past the limit
    deep: Any = 1
    for _ in range(20):
        deep = [deep]
    assert rough(deep, 1 << 20) > 1 << 20  # too deep to walk cheaply: treated as large


class _ThreadRecorder:
    """Wraps a Sealing: records the thread each body was sealed on."""

    def __init__(self, sealing: Any, threads: list[int]) -> None:
        self._sealing = sealing
        self._threads = threads
        self.count, self.nbytes = sealing.count, sealing.nbytes

    def __next__(self) -> bytes:
        self._threads.append(threading.get_ident())
        return next(self._sealing)


@pytest.mark.parametrize("inline_seal_bytes", [0, 1 << 30], ids=["large", "small"])
async def test_when_chunked__the_first_body_of_a_large_payload_is_sealed_off_the_loop(
    inline_seal_bytes: int, monkeypatch
):
    out, _ = _sealers(16 * 1024)
    threads: list[int] = []
    prepare = out.prepare
    monkeypatch.setattr(out, "prepare", lambda *a, **k: _ThreadRecorder(prepare(*a, **k), threads))
    bus = _SlowBus(delay=0.0)
    endpoint = SecureEndpoint(bus, out, None, "connector", inline_seal_bytes=inline_seal_bytes)  # type: ignore[arg-type]
    count = await endpoint.publish(MsgType.UPDATE_RAW, _update(40_000))
    loop_thread = threading.get_ident()
    assert count == len(threads) == len(bus.bodies) > 2
    # Large: encoding and the digest pass run in a worker thread; later chunks (AES only) on
    # the loop. Small: everything on the loop.
    assert (threads[0] == loop_thread) is (inline_seal_bytes > 0)
    assert all(t == loop_thread for t in threads[1:])


async def test_when_a_redelivery_is_opened_inline__its_flag_does_not_leak_into_the_handler():
    out, inn = _sealers(8 * 1024 * 1024)
    endpoint = SecureEndpoint(InMemoryBus(), inn, None, "security", roles=ROLES)
    (body,) = out.seal("update.raw", _update(10).to_payload())
    assert len(body) <= endpoint.inline_open_bytes
    seen: list[bool] = []

    async def handler(msg_type, payload, envelope) -> None:
        seen.append(middleware._REDELIVERY.get())

    await endpoint._handle(
        Delivery(body, "update.raw", redelivered=True, delivery_count=2), handler
    )
    assert seen == [False]
    assert middleware._REDELIVERY.get() is False


class _RecordingStore:
    """A seen-id store that records the thread each check ran on."""

    def __init__(self, performs_io: bool) -> None:
        self.performs_io = performs_io
        self.threads: list[int] = []

    def add_if_new(self, msg_id: bytes, ttl_s: float) -> bool:
        self.threads.append(threading.get_ident())
        return True


@pytest.mark.parametrize("performs_io", [True, False], ids=["network-store", "memory-store"])
async def test_when_the_seen_id_store_does_io__small_bodies_are_opened_off_the_loop(
    performs_io: bool,
):
    out, inn = _sealers(8 * 1024 * 1024)
    store = _RecordingStore(performs_io)
    inn.replay = ReplayGuard(store)
    endpoint = SecureEndpoint(InMemoryBus(), inn, None, "security", roles=ROLES)
    (body,) = out.seal("update.raw", _update(10).to_payload())
    assert len(body) <= endpoint.inline_open_bytes
    got: list[Any] = []

    async def handler(msg_type, payload, envelope) -> None:
        got.append(payload)

    await endpoint._handle(Delivery(body, "update.raw"), handler)
    assert len(got) == 1
    on_loop = store.threads == [threading.get_ident()]
    assert on_loop is (not performs_io)


class _SlowFirstSealer(Sealer):
    """Opens the first body slowly (in its worker thread); records overlap of opens."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.lock = threading.Lock()
        self.opening = 0
        self.max_opening = 0
        self.calls = 0

    def open(self, body: Any, *, expected_msg_type: Any = None) -> Any:
        import time

        with self.lock:
            self.calls += 1
            first = self.calls == 1
            self.opening += 1
            self.max_opening = max(self.max_opening, self.opening)
        try:
            if first:
                time.sleep(0.3)
            return super().open(body, expected_msg_type=expected_msg_type)
        finally:
            with self.lock:
                self.opening -= 1


@pytest.mark.parametrize("open_ahead", [1, 2])
async def test_when_deliveries_are_opened_ahead__handlers_still_run_one_at_a_time_in_order(
    open_ahead: int,
):
    ring = KeyRing("k1", {"k1": os.urandom(32)})
    ident = SigningIdentity.generate(SENDER)
    out = Sealer(ring, sender=SENDER, identity=ident)
    inn = _SlowFirstSealer(
        ring, sender="security-0", trust=TrustStore({SENDER: ident.public_bytes()})
    )
    bus = InMemoryBus(topology=Topology(prefix="o"))
    await bus.start()
    receiver = SecureEndpoint(
        bus, inn, None, "security", roles=ROLES, inline_open_bytes=0, open_ahead=open_ahead
    )
    order: list[int] = []
    running = 0

    async def handler(msg_type, payload, envelope) -> None:
        nonlocal running
        running += 1
        assert running == 1
        await asyncio.sleep(0.01)
        order.append(payload.round_num)
        running -= 1

    await receiver.subscribe("o.security", handler, prefetch=8)
    sender = SecureEndpoint(bus, out, None, "connector")
    for r in range(1, 6):
        await sender.publish(MsgType.UPDATE_RAW, UpdateRaw("c1", r, "site-a", 0, {}, 1))
    for _ in range(300):
        if len(order) == 5:
            break
        await asyncio.sleep(0.01)
    await bus.close()
    assert order == [1, 2, 3, 4, 5]
    assert inn.max_opening == open_ahead  # the slow first open overlapped the next one's
