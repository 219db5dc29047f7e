"""Every (message type, sender role) pair the contracts do not allow, sealed with that role's real
key and published over RabbitMQ, is refused as forbidden by each consumer: dead-lettered with the
reason, counted, never handled. Every allowed pair reaches every consumer's handler."""

from __future__ import annotations

import os

import pytest
import pytest_asyncio
import torch
from bus_helpers import RABBIT_UP, BusFactory, unique_topology, wait_for
from federation.bus.base import Delivery, dead_letter_info
from federation.bus.middleware import SecureEndpoint
from federation.campaign import CampaignConfig
from federation.crypto.keys import KeyRing
from federation.crypto.sealer import Sealer
from federation.crypto.signing import SigningIdentity, TrustStore
from federation.monitoring.metrics import Metrics
from federation.orchestrator.client import CampaignClient
from federation.runtime.roles import SenderRoles
from federation.wire import messages as m
from federation.wire.contracts import CONTRACTS, ENVELOPE_ROLES, Role, may_send
from federation.wire.envelope import decode_envelope
from prometheus_client import CollectorRegistry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not RABBIT_UP, reason="RabbitMQ not reachable on 127.0.0.1:5672"),
    pytest.mark.asyncio(loop_scope="module"),
]

W = {"w": torch.ones(4)}
#: One well-formed payload per message type: a refusal can only be the sender's role.
EXAMPLES: dict[str, m.Message] = {
    c.msg_type.value: msg
    for c, msg in (
        (
            CONTRACTS[m.MsgType.CAMPAIGN_START],
            m.CampaignStart("c1", CampaignConfig(campaign_id="c1").to_payload()),
        ),
        (CONTRACTS[m.MsgType.ROUND_OPEN], m.RoundOpen("c1", 1, 0, ["f1"], 0.0, W)),
        (CONTRACTS[m.MsgType.ROUND_CLOSE], m.RoundClose("c1", 1, ["f1"])),
        (CONTRACTS[m.MsgType.TRAIN_REQUEST], m.TrainRequest("c1", 1, "f1", 0)),
        (CONTRACTS[m.MsgType.UPDATE_RAW], m.UpdateRaw("c1", 1, "f1", 0, W, 10)),
        (CONTRACTS[m.MsgType.UPDATE_SCREENED], m.UpdateScreened("c1", 1, "f1", 0, W, 10)),
        (CONTRACTS[m.MsgType.UPDATE_REJECTED], m.UpdateRejected("c1", 1, "f1", "byzantine")),
        (CONTRACTS[m.MsgType.ROUND_COMPLETED], m.RoundCompleted("c1", 1, 777, global_model=W)),
        (CONTRACTS[m.MsgType.CAMPAIGN_COMPLETED], m.CampaignCompleted("c1", 1, "max_rounds")),
        (CONTRACTS[m.MsgType.CAMPAIGN_ACCEPTED], m.CampaignAccepted("c1", 3, ["f1"])),
        (
            CONTRACTS[m.MsgType.CAMPAIGN_REJECTED],
            m.CampaignRejected("c1", m.CampaignRejected.DUPLICATE, "already running"),
        ),
        (CONTRACTS[m.MsgType.STATS_REQUEST], m.StatsRequest("c1", 0, "f1")),
        (CONTRACTS[m.MsgType.STATS_RAW], m.StatsRaw("c1", 0, "f1", {"n": 1}, b"sig", "f1")),
        (CONTRACTS[m.MsgType.STATS_SCREENED], m.StatsScreened("c1", 0, "f1", {"n": 1})),
        (
            CONTRACTS[m.MsgType.STATS_REJECTED],
            m.StatsRejected("c1", 0, "f1", "invalid_stats", "negative variance"),
        ),
        (
            CONTRACTS[m.MsgType.DATASITE_STATUS],
            m.DatasiteStatus("f1", "trained", {"campaign_id": "c1"}),
        ),
    )
}
PAIRS = [(t.value, r) for t in CONTRACTS for r in ENVELOPE_ROLES]
FORBIDDEN = [pytest.param(t, r, id=f"{t}-by-{r}") for t, r in PAIRS if not may_send(r, t)]
ALLOWED = [pytest.param(t, r, id=f"{t}-by-{r}") for t, r in PAIRS if may_send(r, t)]


class Consumer:
    """One role's consumer: its own key, the roles map, metrics and what reached its handler."""

    def __init__(self, role: Role, keyring: KeyRing, trust: TrustStore) -> None:
        self.role = role
        self.sealer = Sealer(keyring, sender=str(role), trust=trust)
        self.registry = CollectorRegistry()
        self.handled: list[bytes] = []

    def forbidden(self) -> float:
        labels = {"service": str(self.role), "reason": "forbidden"}
        return self.registry.get_sample_value("pdmfed_messages_rejected_total", labels) or 0.0


class Plane:
    """Five senders with real keys; a consumer per role on one RabbitMQ topology."""

    async def start(self) -> None:
        self.buses = BusFactory("rabbitmq", unique_topology(delivery_limit=2))
        keyring = KeyRing("k1", {"k1": os.urandom(32)})
        ids = {r: SigningIdentity.generate(str(r)) for r in ENVELOPE_ROLES}
        trust = TrustStore({str(r): i.public_bytes() for r, i in ids.items()})
        self.senders = {r: Sealer(keyring, sender=str(r), identity=i) for r, i in ids.items()}
        roles = SenderRoles.of_roles(ENVELOPE_ROLES)
        self.consumers = {r: Consumer(r, keyring, trust) for r in ENVELOPE_ROLES}
        self.bus = await self.buses.make(service="test")
        self.dead: list[Delivery] = []
        for role, consumer in self.consumers.items():
            endpoint = SecureEndpoint(
                self.bus,
                consumer.sealer,
                Metrics(str(role), consumer.registry),
                str(role),
                roles=roles,
            )

            async def record(kind, payload, env, consumer=consumer) -> None:
                consumer.handled.append(bytes(env.msg_id))

            if role is Role.ORCHESTRATOR:
                client = CampaignClient(self.bus, endpoint)
                client.on_event = lambda kind, p, rec, c=consumer: c.handled.append(kind.encode())
                await client.listen()
            else:
                queue = self.buses.topology.queue(str(role)).name
                await endpoint.subscribe(queue, record)

        async def on_dead(d: Delivery) -> None:
            self.dead.append(d)

        await self.bus.consume(self.buses.topology.dead_queue.name, on_dead)

    async def publish(self, msg_type: str, role: Role) -> bytes:
        (body,) = self.senders[role].seal(msg_type, EXAMPLES[msg_type].to_payload())
        await self.bus.publish(msg_type, body)
        return bytes(decode_envelope(body).msg_id)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plane():
    p = Plane()
    await p.start()
    try:
        yield p
    finally:
        await p.buses.cleanup()


@pytest.mark.parametrize("msg_type,role", FORBIDDEN)
async def test_when_a_role_sends_a_type_it_may_not__every_consumer_refuses_it_as_forbidden(
    plane: Plane, msg_type: str, role: Role
):
    consumers = [plane.consumers[r] for r in CONTRACTS[m.MsgType(msg_type)].consumer_roles]
    before = {c.role: (c.forbidden(), len(c.handled)) for c in consumers}
    msg_id = await plane.publish(msg_type, role)
    await wait_for(lambda: all(c.forbidden() == before[c.role][0] + 1 for c in consumers))
    queued = [c for c in consumers if c.role is not Role.ORCHESTRATOR]  # its event queue is private

    def dead_of_this() -> list[Delivery]:
        return [d for d in plane.dead if bytes(decode_envelope(d.body).msg_id) == msg_id]

    await wait_for(lambda: len(dead_of_this()) == len(queued))
    infos = [dead_letter_info(d) for d in dead_of_this()]
    assert {i.reason for i in infos} == {"forbidden"}
    assert {i.routing_key for i in infos} == {msg_type}
    assert all(len(c.handled) == before[c.role][1] for c in consumers)


@pytest.mark.parametrize("msg_type,role", ALLOWED)
async def test_when_a_role_sends_a_type_it_may__every_consumer_handles_it(
    plane: Plane, msg_type: str, role: Role
):
    consumers = [plane.consumers[r] for r in CONTRACTS[m.MsgType(msg_type)].consumer_roles]
    before = {c.role: (c.forbidden(), len(c.handled)) for c in consumers}
    await plane.publish(msg_type, role)
    await wait_for(lambda: all(len(c.handled) == before[c.role][1] + 1 for c in consumers))
    assert all(c.forbidden() == before[c.role][0] for c in consumers)
