"""Bus fixtures: one suite, two backends (in-memory and a real RabbitMQ), plus a TCP fault proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from bus_helpers import AMQP_URL, BACKENDS, BusFactory, TcpProxy, unique_topology


@pytest.fixture(params=BACKENDS)
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    factory = BusFactory(request.param, unique_topology(delivery_limit=2))
    try:
        yield factory
    finally:
        await factory.cleanup()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    parts = urlsplit(AMQP_URL)
    p = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await p.start()
    try:
        yield p
    finally:
        await p.cut()
