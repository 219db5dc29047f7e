"""Bus test helpers: a bus factory for both backends, polling, and a TCP fault proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from federation.bus.base import Bus
from federation.bus.memory import InMemoryBroker, InMemoryBus
from federation.bus.topology import Topology

AMQP_URL = os.environ.get("PDMFED_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _broker_reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1.0):
            return True
    except OSError:
        return False


RABBIT_UP = _broker_reachable(AMQP_URL)
_SKIP_RABBIT = pytest.mark.skipif(
    not RABBIT_UP, reason=f"RabbitMQ not reachable at {urlsplit(AMQP_URL).netloc.split('@')[-1]}"
)

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("rabbitmq", id="rabbitmq", marks=[pytest.mark.integration, _SKIP_RABBIT]),
]


class BusFactory:
    """Makes buses that share one broker and one uniquely-prefixed topology; cleans up after."""

    def __init__(self, backend: str, topology: Topology) -> None:
        self.backend = backend
        self.topology = topology
        self._broker = InMemoryBroker(topology) if backend == "memory" else None
        self._buses: list[Bus] = []

    async def make(self, *, service: str = "test", url: str | None = None, **kw: object) -> Bus:
        if self.backend == "memory":
            bus: Bus = InMemoryBus(self._broker)
        else:
            from federation.bus.rabbitmq import RabbitBus

            bus = RabbitBus(
                url or AMQP_URL,
                service=service,
                topology=self.topology,
                reconnect_interval=0.3,
                publish_timeout=10.0,
                **kw,  # type: ignore[arg-type]
            )
        await bus.start()
        self._buses.append(bus)
        return bus

    async def cleanup(self) -> None:
        for bus in self._buses:
            await bus.close(timeout=2.0)
        if self.backend == "rabbitmq":
            from federation.bus.rabbitmq import RabbitBus

            admin = RabbitBus(AMQP_URL, service="test-cleanup", topology=self.topology)
            await admin.start()
            await admin.delete_topology()
            await admin.close()


def unique_topology(**kw: object) -> Topology:
    return Topology(prefix=f"t{uuid.uuid4().hex[:10]}", **kw)  # type: ignore[arg-type]


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; fail the test with a clear message otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


class TcpProxy:
    """Forwards a local port to the broker; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def restore(self) -> None:
        await self.start()  # same port: clients reconnect to the URL they were given

    def url(self, base: str) -> str:
        parts = urlsplit(base)
        netloc = parts.netloc.rsplit("@", 1)
        creds = netloc[0] + "@" if len(netloc) == 2 else ""
        return urlunsplit(parts._replace(netloc=f"{creds}127.0.0.1:{self.port}"))
