"""Least privilege on the real broker: each role's user can do what its role does and nothing else.

A scratch vhost holds the deployment's topology (same names) and one user per role with the
permissions and topic permissions of ``federation.bus.permissions`` (what
deploy/rabbitmq/definitions.json carries). Every forbidden publish, bind, declare, delete and
consume is refused by RabbitMQ; every allowed one works; the services start and run a campaign
with those users and without declaring any topology.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import aiormq
import pytest
from federation.bus.permissions import ROLES, event_keys, publish_keys
from federation.bus.topology import DEFAULT_TOPOLOGY
from federation.wire.messages import MsgType
from scratch_broker import ScratchBroker, rabbitmqctl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TOPO = DEFAULT_TOPOLOGY
EXCHANGE, DLX, DEAD = TOPO.exchange.name, TOPO.dlx.name, TOPO.dead_queue.name
SERVICE_QUEUES = {role: TOPO.queue(role).name for role in ROLES if role != "orchestrator"}
ALL_TYPES = tuple(t.value for t in MsgType)


@pytest.fixture(scope="module")
def broker():
    if rabbitmqctl() is None:
        pytest.skip(
            "rabbitmqctl is not installed: the test cannot create its scratch vhost and users"
        )
    scratch = ScratchBroker().create()
    try:
        yield scratch
    finally:
        scratch.remove()


async def _outcome(conn: aio_pika.abc.AbstractConnection, op) -> str:
    """'ok' or 'refused' (ACCESS_REFUSED); anything else is a test failure."""
    channel = await conn.channel(publisher_confirms=True)
    try:
        await op(channel)
        return "ok"
    except aiormq.exceptions.ChannelAccessRefused:
        return "refused"
    finally:
        if not channel.is_closed:
            await channel.close()


def publish(exchange: str, key: str):
    async def op(channel):
        ex = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        await ex.publish(aio_pika.Message(b"probe"), routing_key=key)

    return op


def bind(queue: str, key: str, exchange: str = EXCHANGE):
    async def op(channel):
        q = await channel.get_queue(queue, ensure=False)
        await q.bind(exchange, key)

    return op


def declare_queue(name: str):
    async def op(channel):
        await channel.declare_queue(name, durable=True)

    return op


def declare_exchange(name: str):
    async def op(channel):
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)

    return op


def delete_queue(name: str):
    async def op(channel):
        await channel.queue_delete(name)

    return op


def delete_exchange(name: str):
    async def op(channel):
        await channel.exchange_delete(name)

    return op


def consume(queue: str):
    async def op(channel):
        q = await channel.get_queue(queue, ensure=False)
        tag = await q.consume(lambda message: None)
        await q.cancel(tag)

    return op


def passive(queue: str):
    async def op(channel):
        await channel.declare_queue(queue, passive=True)
        await channel.get_exchange(EXCHANGE)  # passive exchange.declare

    return op


def _expectations(role: str) -> dict[str, tuple[str, object]]:
    """label -> (expected outcome, operation) for one role's user."""
    own_dead = f"dead.{role}"
    cases: dict[str, tuple[str, object]] = {}
    for key in ALL_TYPES:
        cases[f"publish {key}"] = (
            "ok" if key in publish_keys(role) else "refused",
            publish(EXCHANGE, key),
        )
    for other in ROLES:
        dead = f"dead.{other}"
        cases[f"dead-letter as {other}"] = (
            "ok" if dead == own_dead else "refused",
            publish(DLX, dead),
        )
    cases["publish '#' pattern key"] = ("refused", publish(EXCHANGE, "#"))
    cases["publish via amq.topic"] = ("refused", publish("amq.topic", "update.screened"))
    for name, queue in SERVICE_QUEUES.items():  # straight into a queue through the default exchange
        cases[f"default exchange -> {name}"] = ("refused", publish("", queue))
        cases[f"passive declare {queue}"] = ("ok", passive(queue))
        cases[f"consume {queue}"] = ("ok" if role == name else "refused", consume(queue))
        cases[f"bind {queue} to #"] = ("refused", bind(queue, "#"))
        cases[f"delete {queue}"] = ("refused", delete_queue(queue))
    cases["consume the dead-letter queue"] = ("refused", consume(DEAD))
    cases["bind the dead-letter queue"] = ("refused", bind(DEAD, "#", DLX))
    cases["delete the dead-letter queue"] = ("refused", delete_queue(DEAD))
    cases["declare a queue"] = ("refused", declare_queue(f"{EXCHANGE}.evil"))
    cases["declare an exchange"] = ("refused", declare_exchange(f"{EXCHANGE}.evil"))
    cases["redeclare the main exchange"] = ("refused", declare_exchange(EXCHANGE))
    cases["delete the main exchange"] = ("refused", delete_exchange(EXCHANGE))
    cases["delete the dead-letter exchange"] = ("refused", delete_exchange(DLX))
    return cases


async def _event_queue_cases(conn) -> dict[str, str]:
    """The orchestrator's private event queue (named as the bus's robust channel names it), bound
    to event types only."""
    channel = await conn.channel()
    queue = await channel.declare_queue(
        f"amq_{uuid.uuid4().hex}", exclusive=True, auto_delete=True, durable=False
    )
    out = {"declare its event queue": "ok"}
    try:
        for key in event_keys():
            out[f"bind events to {key}"] = await _outcome(conn, bind(queue.name, key))
        for key in ("update.screened", "update.raw", "train.request", "#", "*.*"):
            out[f"bind events to {key}"] = await _outcome(conn, bind(queue.name, key))
        out["consume its event queue"] = await _outcome(conn, consume(queue.name))
    finally:
        await channel.close()
    return out


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_may_do_exactly_what_its_role_does_on_the_broker(broker, role):
    cases = _expectations(role)
    conn = await aio_pika.connect(broker.url(role))
    try:
        got = {label: await _outcome(conn, op) for label, (_, op) in cases.items()}
        if role == "orchestrator":
            got.update(await _event_queue_cases(conn))
    finally:
        await conn.close()
    want = {label: expected for label, (expected, _) in cases.items()}
    if role == "orchestrator":
        want.update({"declare its event queue": "ok", "consume its event queue": "ok"})
        want.update({f"bind events to {k}": "ok" for k in event_keys()})
        want.update(
            {
                f"bind events to {k}": "refused"
                for k in ("update.screened", "update.raw", "train.request", "#", "*.*")
            }
        )
    wrong = {label: (want[label], got[label]) for label in want if got[label] != want[label]}
    assert not wrong, f"{role}: (expected, got) {wrong}"
    assert any(v == "ok" for v in got.values()) and any(v == "refused" for v in got.values())


async def _until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return predicate()


async def test_services_run_a_campaign_with_only_their_own_permissions_and_declare_nothing(
    broker, tmp_path
):
    from federation.bus.middleware import SecureEndpoint
    from federation.campaign import CampaignConfig
    from federation.config import Settings
    from federation.datasite_registry import DatasiteRegistry, write_registry
    from federation.monitoring import Metrics
    from federation.orchestrator.client import CampaignClient
    from federation.runtime.launch import (
        ensure_identities,
        make_bus,
        make_sealer,
        sender_roles,
        start_node,
    )
    from federation.runtime.registry import SERVICE_NAMES
    from prometheus_client import CollectorRegistry

    keys = tmp_path / "keys"
    ensure_identities(keys, [*SERVICE_NAMES, "orchestrator"])

    async def dead_letters() -> int:
        admin = await aio_pika.connect(broker.url())
        try:
            channel = await admin.channel()
            return (
                await channel.declare_queue(DEAD, passive=True)
            ).declaration_result.message_count
        finally:
            await admin.close()

    def settings(role: str) -> Settings:
        return Settings(
            demo=True,
            amqp_url=broker.url(role),
            declare_topology=False,
            keys_dir=keys,
            state_dir=tmp_path / role,
            redis_url=None,
            service_id=role,
        )

    # the connector's registry points at a port nothing listens on: it answers datasite.status failed
    registry = DatasiteRegistry.load(
        write_registry(
            tmp_path / "registry",
            {
                "factory-1": (
                    "http://127.0.0.1:9",
                    "connector@pdm-factory.com",
                    "a-password-nobody-checks",
                )
            },
        )
    )
    metrics = CollectorRegistry()
    nodes = []
    client_bus = None
    try:
        for name in SERVICE_NAMES:
            nodes.append(
                await start_node(
                    name,
                    settings(name),
                    registry=metrics,
                    datasite_registry=registry,
                    store_path=tmp_path / f"{name}.sqlite",
                )
            )
        assert all(node.ready() for node in nodes)
        client_bus = make_bus(settings("orchestrator"), "orchestrator")
        await client_bus.start()
        sealer = make_sealer(settings("orchestrator"), "orchestrator")
        client = CampaignClient(
            client_bus,
            SecureEndpoint(
                client_bus,
                sealer,
                Metrics("orchestrator", metrics),
                "orchestrator",
                roles=sender_roles(settings("orchestrator")),
            ),
        )
        await client.listen()
        cfg = CampaignConfig.from_payload(
            {
                "campaign_id": "least-privilege",
                "datasites": ["factory-1"],
                "rounds": 1,
                "quorum": 1,
                "max_retries": 0,
                "round_timeout_s": 60,
                "robustness": {"enabled": False, "min_clients": 1},
            }
        )
        await client.start_campaign(cfg)
        record = client._record(cfg.campaign_id)
        # campaign.accepted, stats.request and campaign.completed (trainer-dispatch's user) and
        # datasite.status (the connector's) go through: round 0 reaches the unreachable datasite,
        # its failure reaches the orchestrator, and the campaign ends no_quorum in round 0
        assert await _until(
            lambda: (
                record.accepted
                and record.completed
                and any(s["status"] == "failed" for s in record.statuses)
            ),
            120,
        ), record
        assert record.completed["reason"] == "no_quorum"
        # a forged train.request: the connector dead-letters it through the DLX with its own key
        before = await dead_letters()
        forger = await aio_pika.connect(broker.url("trainer-dispatch"))
        try:
            channel = await forger.channel(publisher_confirms=True)
            await (await channel.get_exchange(EXCHANGE, ensure=False)).publish(
                aio_pika.Message(b"not an envelope"), routing_key="train.request"
            )
        finally:
            await forger.close()

        deadline = time.monotonic() + 30
        while await dead_letters() <= before and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert await dead_letters() == before + 1
    finally:
        if client_bus is not None:
            await client_bus.close()
        for node in nodes:
            await node.stop()


@pytest.mark.parametrize("role", ["connector", "aggregator"])
async def test_a_service_told_to_declare_the_topology_stops_with_one_line_saying_how_to_start(
    broker, role
):
    from federation.bus.rabbitmq import RabbitBus
    from federation.errors import ConfigError

    bus = RabbitBus(
        broker.url(role), service=role, topology=TOPO, declare=True, connect_give_up_s=5
    )
    with pytest.raises(ConfigError, match="PDMFED_DECLARE_TOPOLOGY=false") as info:
        await bus.start()
    assert "\n" not in str(info.value) and broker.passwords[role] not in str(info.value)
