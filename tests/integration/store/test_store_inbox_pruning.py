"""The inbox forgets message ids past the replay window; the replay guard refuses those messages."""

from __future__ import annotations

import asyncio
import os

import pytest
from federation.runtime.store import PRUNE_INTERVAL_S
from federation.wire.messages import DatasiteStatus

pytestmark = pytest.mark.integration

RETENTION_S = 660.0


class _Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_when_100k_messages_are_handled_over_many_windows__the_inbox_stays_bounded(open_store):
    clock = _Clock()
    store = open_store(inbox_retention_s=RETENTION_S, clock=clock)
    per_tx, step_s, total = 500, 30.0, 100_000  # 500 messages every 30 s, 3000 s per window... x5
    largest = 0
    for batch in range(total // per_tx):
        with store.transaction() as tx:
            for i in range(per_tx):
                tx.mark_handled((batch * per_tx + i).to_bytes(16, "big"), "datasite.status")
        clock.now += step_s
        largest = max(largest, store.inbox_size())
    # Pruned after a commit at most every PRUNE_INTERVAL_S: at most the retention plus one
    # interval of messages (plus the batch in hand) are remembered, whatever the total.
    bound = int((RETENTION_S + PRUNE_INTERVAL_S) / step_s + 1) * per_tx
    assert largest <= bound < total // 4
    assert store.inbox_size() <= bound
    with store.transaction() as tx:  # the newest ids are still there; the oldest are gone
        assert tx.seen((total - 1).to_bytes(16, "big")) and not tx.seen((0).to_bytes(16, "big"))


async def test_when_a_message_older_than_the_window_is_replayed__it_is_refused_though_its_id_was_pruned(
    open_store,
):
    from federation.bus.memory import InMemoryBroker, InMemoryBus
    from federation.bus.middleware import SecureEndpoint
    from federation.bus.topology import Topology
    from federation.crypto import KeyRing, ReplayGuard, Sealer, SigningIdentity, TrustStore
    from federation.crypto.replay import InMemorySeenStore
    from federation.runtime.service import Service, ServiceRunner

    clock = _Clock()
    window = RETENTION_S - 30.0  # the freshness window; retention adds the clock skew
    store = open_store(inbox_retention_s=RETENTION_S, clock=clock)
    ring = KeyRing("k1", {"k1": os.urandom(32)})
    ident = SigningIdentity.generate("connector")
    trust = TrustStore({"connector": ident.public_bytes()})
    sender = Sealer(ring, sender="connector", identity=ident, clock=clock)

    def receiver() -> Sealer:  # a fresh seen-id memory: a restarted or other replica
        guard = ReplayGuard(InMemorySeenStore(clock=clock), window, clock=clock)
        return Sealer(ring, sender="trainer-dispatch", trust=trust, replay=guard, window_s=window)

    topology = Topology().with_prefix("prune-test")
    broker = InMemoryBroker(topology)
    handled: list[str] = []

    def on_status(tx, msg, envelope) -> None:
        handled.append(msg.status)
        tx.put("handled", len(handled))

    queue = topology.queue("trainer-dispatch").name
    service = Service(name="trainer-dispatch", queue=queue, handlers={DatasiteStatus: on_status})
    dead = topology.dead_queue.name
    running: list = []

    async def restart_receiver() -> InMemoryBus:
        """Stop the running receiver; start one whose seen-id memory is empty (as after a
        restart, or on another replica): only the shared inbox remembers what was handled."""
        for old in running:
            await old.close()
        bus = InMemoryBus(broker)
        await bus.start()
        runner = ServiceRunner(
            service,
            SecureEndpoint(
                bus, receiver(), None, "trainer-dispatch", roles={"connector": "connector"}
            ),
            store,
        )
        await runner.start()
        running[:] = [bus]
        return bus

    async def deliver(bus, body: bytes) -> None:
        before = (len(handled), await bus.queue_depth(dead))
        await bus.publish("datasite.status", body)
        for _ in range(1000):  # up to 10 s on a loaded machine; returns at the first change
            await asyncio.sleep(0.01)
            if (len(handled), await bus.queue_depth(dead)) != before:
                return

    try:
        (body,) = sender.seal("datasite.status", {"datasite_id": "factory_a", "status": "trained"})
        await deliver(await restart_receiver(), body)
        assert handled == ["trained"] and store.inbox_size() == 1
        # Inside the window a receiver that forgot the id lets the copy through the guard: the
        # inbox stops it.
        bus = await restart_receiver()
        await deliver(bus, body)
        assert handled == ["trained"] and await bus.queue_depth(dead) == 0  # acked as a duplicate
        # Past the retention the id is pruned, and the guard refuses the copy as expired.
        clock.now += RETENTION_S + 1.0
        assert store.prune_inbox() == 1 and store.inbox_size() == 0
        bus = await restart_receiver()
        await deliver(bus, body)
        assert handled == ["trained"] and await bus.queue_depth(dead) == 1
    finally:
        for old in running:
            await old.close()
