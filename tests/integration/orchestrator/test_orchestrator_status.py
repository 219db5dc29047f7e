"""`pdmfed status` against the real broker: queue depths of every queue, campaigns from dispatch state."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
from federation.bus.topology import DEFAULT_TOPOLOGY
from federation.config import Settings
from federation.orchestrator.status import collect_status

pytestmark = pytest.mark.integration

AMQP_URL = os.environ.get("PDMFED_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def declared_prefix():
    from federation.bus.rabbitmq import RabbitBus

    prefix = f"status-{uuid.uuid4().hex[:8]}"
    topo = DEFAULT_TOPOLOGY.with_prefix(prefix)

    async def declare_and_fill():
        bus = RabbitBus(AMQP_URL, service="status-test", topology=topo)
        try:
            await bus.start()
        except Exception as exc:
            pytest.skip(f"RabbitMQ is not reachable at {AMQP_URL}: {exc}")
        for _ in range(3):
            await bus.publish("update.raw", b"x")  # routed to the security queue, nobody consumes
        await bus.close()

    async def delete():
        bus = RabbitBus(AMQP_URL, service="status-test", topology=topo, declare=False)
        await bus.start()
        await bus.delete_topology()
        await bus.close()

    asyncio.run(declare_and_fill())
    yield prefix
    asyncio.run(delete())


def test_when_messages_wait_in_a_queue__status_reports_its_depth(declared_prefix, tmp_path):
    status = collect_status(Settings(amqp_url=AMQP_URL, topology_prefix=declared_prefix, state_dir=tmp_path))
    assert status["queues"][f"{declared_prefix}.security"] == 3
    assert status["queues"][f"{declared_prefix}.aggregator"] == 0
    assert status["campaigns"] == []


def test_when_run_from_the_command_line__status_prints_json(declared_prefix, tmp_path):
    env = {**os.environ, "PDMFED_AMQP_URL": AMQP_URL, "PDMFED_TOPOLOGY_PREFIX": declared_prefix,
           "PDMFED_STATE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "federation.cli", "status", "--json"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout)["queues"][f"{declared_prefix}.security"] == 3
