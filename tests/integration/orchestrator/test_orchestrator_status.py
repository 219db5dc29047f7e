"""`pdmfed status` against the real broker and real service HTTP ports: it asks, never reads files."""

from __future__ import annotations

import asyncio
import json
import os
import socket
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


@pytest.fixture
def dispatch_port():
    """A service's real health server: trainer-dispatch's metrics at round 4, ready."""
    from federation.monitoring import HealthServer, Metrics
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = Metrics("trainer-dispatch", registry)
    metrics.round.labels(campaign="c-status").set(4)
    metrics.set_connections("c-status", 2, 3)
    metrics.consumed("round.completed")
    metrics.rejected("replay")
    server = HealthServer(0, registry)
    yield server.port
    server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_when_messages_wait_in_a_queue__status_reports_its_depth(declared_prefix, tmp_path):
    status = collect_status(
        Settings(amqp_url=AMQP_URL, topology_prefix=declared_prefix, state_dir=tmp_path),
        services={},
    )
    assert status["queues"][f"{declared_prefix}.security"] == 3
    assert status["queues"][f"{declared_prefix}.aggregator"] == 0


def test_status_asks_each_service_over_its_http_port(dispatch_port, tmp_path):
    down = _free_port()
    status = collect_status(
        Settings(state_dir=tmp_path),
        services={
            "trainer-dispatch": f"http://127.0.0.1:{dispatch_port}",
            "security": f"http://127.0.0.1:{down}",
        },
    )
    dispatch = status["services"]["trainer-dispatch"]
    assert dispatch["reachable"] and dispatch["ready"]
    assert dispatch["round"] == {"c-status": 4}
    assert dispatch["datasites"] == {"c-status": [2, 3]}
    assert dispatch["consumed"] == 1 and dispatch["rejected"] == {"replay": 1}
    security = status["services"]["security"]
    assert not security["reachable"] and "refused" in security["error"].lower()


def test_when_run_from_the_command_line__status_prints_json_and_fails_on_a_missing_service(
    declared_prefix, dispatch_port, tmp_path
):
    env = {
        **os.environ,
        "PDMFED_AMQP_URL": AMQP_URL,
        "PDMFED_TOPOLOGY_PREFIX": declared_prefix,
        "PDMFED_STATE_DIR": str(tmp_path),
    }
    argv = [
        sys.executable,
        "-m",
        "federation.cli",
        "status",
        "--json",
        "--service",
        f"trainer-dispatch=http://127.0.0.1:{dispatch_port}",
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["queues"][f"{declared_prefix}.security"] == 3
    assert body["services"]["trainer-dispatch"]["round"] == {"c-status": 4}
    argv += ["--service", f"security=http://127.0.0.1:{_free_port()}"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1 and not json.loads(out.stdout)["services"]["security"]["ready"]


def test_a_malformed_service_address_is_refused_in_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "federation.cli", "status", "--service", "dispatch"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip() == "pdmfed: --service must be NAME=http(s)://HOST:PORT, got 'dispatch'"
    )
