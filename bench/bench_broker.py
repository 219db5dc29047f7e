"""Sealed updates through RabbitMQ with every consumer check vs raw aio-pika of the same bytes.

Run: ``.venv/bin/python -m bench.bench_broker [--smoke] [--out PATH]``.
Sealed: SecureEndpoint.publish (seal, chunk over 8 MiB, confirmed mandatory publish) →
SecureEndpoint.subscribe on the security queue (decode, signature, AEAD, checksum, replay,
typed UpdateRaw) → handler. Raw: aio-pika publish with publisher confirms of one message of
the update's size (persistent, mandatory) into the same quorum queue, consumer acks each.
Both pipelines run publisher and consumer concurrently in one process on a fresh topology.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import torch
from federation.bus.middleware import SecureEndpoint
from federation.bus.rabbitmq import RabbitBus
from federation.bus.topology import Topology
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.monitoring import Metrics
from prometheus_client import CollectorRegistry

from bench._util import AMQP_URL, bench_main, bench_prefix, rabbit_available, summary

NAME = "broker"
MB = 1024 * 1024
#: size MB -> updates per timed run (about 32-128 MB moved per run).
FULL = {"sizes": {1: 32, 8: 8, 32: 4}, "runs": 5}
SMOKE = {"sizes": {0.25: 4}, "runs": 5}
RUN_TIMEOUT_S = 120.0
RAW_KEY = "bench.raw"


def _payload(size_bytes: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    return {
        "campaign_id": "bench",
        "round_num": 1,
        "datasite_id": "factory_a",
        "model_version": 0,
        "delta": {"w": torch.randn(size_bytes // 4, generator=gen)},
        "num_samples": 100,
        "metrics": {},
    }


class _Counter:
    """Counts handled messages; ``wait(n)`` returns once n arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self._cond = asyncio.Condition()

    async def hit(self, nbytes: int) -> None:
        async with self._cond:
            self.count += 1
            self.bytes += nbytes
            self._cond.notify_all()

    async def wait(self, n: int, timeout: float) -> None:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: self.count >= n), timeout)


class _Sealed:
    """Producer and consumer SecureEndpoints with separate keys, identities and replay guards."""

    def __init__(self, topo: Topology) -> None:
        key = os.urandom(32)
        pub_id = SigningIdentity.generate("connector")
        trust = TrustStore({"connector": pub_id.public_bytes()})
        self.registry = CollectorRegistry()
        self.pub_bus = RabbitBus(AMQP_URL, service="bench-producer", topology=topo)
        self.con_bus = RabbitBus(AMQP_URL, service="security", topology=topo, declare=False)
        self.producer = SecureEndpoint(
            self.pub_bus,
            Sealer(KeyRing("k1", {"k1": key}), sender="connector", identity=pub_id, trust=trust),
            Metrics("bench-producer", self.registry),
            "bench-producer",
        )
        self.consumer = SecureEndpoint(
            self.con_bus,
            Sealer(KeyRing("k1", {"k1": key}), sender="security", trust=trust),
            Metrics("security", self.registry),
            "security",
        )
        self.counter = _Counter()
        self.queue = topo.queue("security").name

    async def start(self) -> None:
        await self.pub_bus.start()
        await self.con_bus.start()

        async def handler(msg_type: Any, payload: Any, envelope: Any) -> None:
            delta = payload.delta["w"]
            await self.counter.hit(delta.numel() * delta.element_size())

        await self.consumer.subscribe(self.queue, handler)

    async def run_once(self, payload: dict, count: int) -> float:
        target = self.counter.count + count
        start = time.perf_counter()
        for _ in range(count):
            await self.producer.publish("update.raw", payload, datasite_id="factory_a", round_num=1)
        await self.counter.wait(target, RUN_TIMEOUT_S)
        return time.perf_counter() - start

    def rejected(self) -> float:
        total = 0.0
        for metric in self.registry.collect():
            if metric.name == "pdmfed_messages_rejected":
                total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return total

    async def close(self) -> None:
        await self.con_bus.close()
        await self.pub_bus.close()


class _Raw:
    """Plain aio-pika: confirmed persistent mandatory publishes, manual acks, same queue."""

    def __init__(self, topo: Topology, prefetch: int) -> None:
        self.topo = topo
        self.prefetch = prefetch
        self.counter = _Counter()

    async def start(self) -> None:
        import aio_pika

        self.pub_conn = await aio_pika.connect_robust(AMQP_URL)
        self.con_conn = await aio_pika.connect_robust(AMQP_URL)
        channel = await self.pub_conn.channel(publisher_confirms=True, on_return_raises=True)
        self.exchange = await channel.get_exchange(self.topo.exchange.name)
        # Its own quorum queue with the security queue's arguments, so the sealed consumer
        # never sees raw bytes (and vice versa).
        spec = self.topo.queue("security")
        self.queue_name = f"{self.topo.prefix}.raw"
        declared = await channel.declare_queue(
            self.queue_name, durable=True, arguments=spec.arguments()
        )
        await declared.bind(self.exchange, RAW_KEY)
        con_channel = await self.con_conn.channel()
        await con_channel.set_qos(prefetch_count=self.prefetch)
        queue = await con_channel.declare_queue(self.queue_name, passive=True)

        async def on_message(message: Any) -> None:
            await message.ack()
            await self.counter.hit(len(message.body))

        await queue.consume(on_message)

    async def run_once(self, body: bytes, count: int) -> float:
        import aio_pika

        target = self.counter.count + count
        start = time.perf_counter()
        for _ in range(count):
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await self.exchange.publish(message, RAW_KEY, mandatory=True)
        await self.counter.wait(target, RUN_TIMEOUT_S)
        return time.perf_counter() - start

    async def close(self) -> None:
        await self.con_conn.close()
        async with self.pub_conn.channel() as channel:
            await channel.queue_delete(self.queue_name)
        await self.pub_conn.close()


def _rates(times: list[float], count: int, size_mb: float) -> dict[str, Any]:
    row: dict[str, Any] = summary(times)
    row["updates_per_s"] = count / row["median_s"]
    row["mb_per_s"] = count * size_mb / row["median_s"]
    row["mb_per_s_min_max"] = [count * size_mb / row["max_s"], count * size_mb / row["min_s"]]
    return row


async def _run(plan: dict) -> dict[str, Any]:
    topo = Topology().with_prefix(bench_prefix(NAME))
    sealed = _Sealed(topo)
    await sealed.start()
    raw = _Raw(topo, prefetch=sealed.con_bus.prefetch_count)
    await raw.start()
    rows = []
    try:
        for size_mb, count in plan["sizes"].items():
            size = int(size_mb * MB)
            payload = _payload(size)
            body = bytes(payload["delta"]["w"].numpy().tobytes())
            # warm-up both paths once, then alternate runs so drift hits both alike
            await raw.run_once(body, 1)
            await sealed.run_once(payload, 1)
            raw_t, sealed_t = [], []
            for _ in range(plan["runs"]):
                raw_t.append(await raw.run_once(body, count))
                sealed_t.append(await sealed.run_once(payload, count))
            row = {
                "size_mb": size_mb,
                "updates_per_run": count,
                "sealed": _rates(sealed_t, count, size_mb),
                "raw": _rates(raw_t, count, size_mb),
            }
            row["ratio_sealed_vs_raw"] = row["sealed"]["mb_per_s"] / row["raw"]["mb_per_s"]
            rows.append(row)
            print(
                f"{size_mb:>6} MB x{count:<3} sealed {row['sealed']['mb_per_s']:7.1f} MB/s"
                f" ({row['sealed']['updates_per_s']:6.1f}/s)  raw {row['raw']['mb_per_s']:7.1f}"
                f" MB/s  ratio {row['ratio_sealed_vs_raw']:.2f}",
                flush=True,
            )
        rejected = sealed.rejected()
    finally:
        await raw.close()
        await sealed.close()
        cleanup = RabbitBus(AMQP_URL, service="bench-cleanup", topology=topo, declare=False)
        await cleanup.start()
        await cleanup.delete_topology()
        await cleanup.close()
    return {"rows": rows, "rejected": rejected, "topology_prefix": topo.prefix}


def run(smoke: bool) -> dict[str, Any]:
    plan = SMOKE if smoke else FULL
    reason = asyncio.run(rabbit_available())
    base = {
        "smoke": smoke,
        "method": "per size: one warm-up update per path, then 5 alternating runs of N updates"
        " (raw, sealed, raw, ...); a run's time is first publish to last consumer-side"
        " completion (sealed: after every check and the typed-payload handler; raw: after ack)."
        " Sealed bodies over 8 MiB are chunked (separately sealed chunks); raw sends one"
        " message per update into a twin quorum queue (same arguments). Quorum queues, persistent messages, publisher confirms,"
        " prefetch as RabbitBus sizes it.",
        "targets": {"ratio_sealed_vs_raw_min_for_1mb_plus": 0.8},
    }
    if reason is not None:
        return {**base, "error": reason, "rows": []}
    result = asyncio.run(_run(plan))
    big = [r for r in result["rows"] if r["size_mb"] >= 1]
    return {
        **base,
        **result,
        "summary": {
            "min_ratio_1mb_plus": min((r["ratio_sealed_vs_raw"] for r in big), default=None),
            "target_met": bool(big) and min(r["ratio_sealed_vs_raw"] for r in big) >= 0.8,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: [--smoke] [--out FILE]."""
    return bench_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
