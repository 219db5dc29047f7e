"""Claim check over RabbitMQ and PostgreSQL: outbox → broker (references) → consumer (bodies)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from bus_helpers import RABBIT_UP, BusFactory, unique_topology, wait_for
from federation.bus.base import Delivery, dead_letter_info
from federation.bus.middleware import SecureEndpoint
from federation.crypto.keys import KeyRing
from federation.crypto.sealer import Sealer
from federation.crypto.signing import SigningIdentity, TrustStore
from federation.monitoring.metrics import Metrics
from federation.runtime.claims import ClaimStore
from federation.runtime.service import Service, ServiceRunner
from federation.wire.claims import ClaimReference
from federation.wire.messages import UpdateRaw
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parents[1] / "store"))
from store_helpers import ADMIN_URL, postgres_unavailable  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SENDER = "connector"
N = 1_000_000  # 4 MB per update


def _update(site: str) -> UpdateRaw:
    return UpdateRaw(
        campaign_id="c1",
        round_num=1,
        datasite_id=site,
        model_version=0,
        delta={"w": torch.full((N,), float(ord(site[-1])))},
        num_samples=10,
    )


@pytest.fixture
def pg_url():
    reason = postgres_unavailable()
    if reason is not None or not RABBIT_UP:
        pytest.skip(reason or "RabbitMQ not reachable")
    from federation.runtime.store_postgres import scratch_database

    with scratch_database(ADMIN_URL, "claims") as url:
        yield url


async def test_when_updates_go_by_claim_check__the_broker_carries_references_and_bad_bodies_are_refused(
    pg_url, tmp_path
):
    from federation.runtime.store_postgres import PostgresStore

    ring = KeyRing("k1", {"k1": os.urandom(32)})
    ident = SigningIdentity.generate(SENDER)
    out = Sealer(ring, sender=SENDER, identity=ident)
    inn = Sealer(ring, sender="security", trust=TrustStore({SENDER: ident.public_bytes()}))
    claims_dir = tmp_path / "claims"
    store = PostgresStore(pg_url, schema="pdmfed_connector", blob_dir=tmp_path / "blobs")
    store.claims = ClaimStore(claims_dir, SENDER, out)
    buses = BusFactory("rabbitmq", unique_topology(delivery_limit=2))
    out_registry, in_registry = CollectorRegistry(), CollectorRegistry()
    try:
        bus = await buses.make()
        producer = SecureEndpoint(bus, out, Metrics("connector", out_registry), "connector")
        consumer = SecureEndpoint(
            bus, inn, Metrics("security", in_registry), "security", roles={SENDER: "connector"}
        )
        consumer.claims = ClaimStore(claims_dir, "security", inn)
        sites = ("site-a", "site-b", "site-c")
        for site in sites:  # one transaction each: the body is durable before the row commits
            with store.transaction() as tx:
                tx.emit("update.raw", _update(site).to_payload(), datasite_id=site, round_num=1)
        refs = {
            item.datasite_id: ClaimReference.from_payload(item.payload)
            for item in store.pending_outbox()
        }
        assert all(ref is not None for ref in refs.values())
        runner = ServiceRunner(Service(name="connector", queue="unused"), producer, store)
        assert await runner.flush_outbox() == 3
        sent = out_registry.get_sample_value(
            "pdmfed_message_bytes_total", {"service": "connector", "direction": "out"}
        )
        assert sent < 3 * 4096  # references only: the 4 MB updates never crossed the broker
        # One body altered, one gone, after publishing: both refused, typed and counted.
        tampered = claims_dir / SENDER / refs["site-b"].name
        data = bytearray(tampered.read_bytes())
        data[-100] ^= 0xFF
        tampered.write_bytes(bytes(data))
        (claims_dir / SENDER / refs["site-c"].name).unlink()

        handled: list[tuple[UpdateRaw, object]] = []
        dead: list[Delivery] = []

        async def record(msg_type, payload, envelope) -> None:
            handled.append((payload, envelope))

        async def on_dead(d: Delivery) -> None:
            dead.append(d)

        await consumer.subscribe(buses.topology.queue("security").name, record)
        await bus.consume(buses.topology.dead_queue.name, on_dead)
        await wait_for(lambda: len(handled) == 1 and len(dead) == 2, timeout=30)
        (msg, envelope), = handled  # fmt: skip
        assert msg.datasite_id == "site-a" and envelope.sender == SENDER
        assert torch.equal(msg.delta["w"], _update("site-a").delta["w"])
        assert sorted(dead_letter_info(d).reason for d in dead) == ["claim_missing", "integrity"]
        for reason in ("claim_missing", "integrity"):
            assert (
                in_registry.get_sample_value(
                    "pdmfed_messages_rejected_total", {"service": "security", "reason": reason}
                )
                == 1.0
            )
        assert store.pending_outbox() == []
        assert (claims_dir / SENDER / refs["site-a"].name).exists()  # kept for the retention
    finally:
        await buses.cleanup()
        store.drop_schema()
        store.close()
