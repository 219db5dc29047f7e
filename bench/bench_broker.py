"""Sealed updates through RabbitMQ with every consumer check vs raw aio-pika of the same bytes.

Run: ``.venv/bin/python -m bench.bench_broker [--smoke] [--out PATH]``.
Sealed: SecureEndpoint.publish (seal, chunk over 8 MiB, confirmed mandatory publish) →
SecureEndpoint.subscribe on the security queue (decode, signature, AEAD, checksum, replay,
typed UpdateRaw) → handler. Raw: aio-pika publish with publisher confirms of one message of
the update's size (persistent, mandatory) into the same quorum queue, consumer acks each.
Both pipelines publish from this process and consume in one separate consumer process (as the
connector and the security service are separate processes), on a fresh topology.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from federation.bus.middleware import SecureEndpoint
from federation.bus.rabbitmq import RabbitBus
from federation.bus.topology import Topology
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.monitoring import Metrics
from federation.runtime.allocator import keep_freed_buffers
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


#: Environment variables that carry the run's keys and names to the consumer process.
_ENV_KEY = "PDMFED_BENCH_KEY_HEX"
_ENV_TRUST = "PDMFED_BENCH_TRUST_HEX"
_ENV_PREFIX = "PDMFED_BENCH_PREFIX"
_ENV_PREFETCH = "PDMFED_BENCH_PREFETCH"


def _raw_queue_name(topo: Topology) -> str:
    return f"{topo.prefix}.raw"


# -- consumer process: what the security service does on receipt, and its raw twin -----------
async def _consume() -> None:
    """Consume both queues; one stdout line per handled message ("S"/"R" and its bytes) until
    "STOP" arrives on stdin, then the rejection count."""
    import aio_pika

    topo = Topology().with_prefix(os.environ[_ENV_PREFIX])
    key = bytes.fromhex(os.environ[_ENV_KEY])
    trust = TrustStore({"connector": bytes.fromhex(os.environ[_ENV_TRUST])})
    registry = CollectorRegistry()
    bus = RabbitBus(AMQP_URL, service="security", topology=topo, declare=False)
    await bus.start()
    consumer = SecureEndpoint(
        bus,
        Sealer(KeyRing("k1", {"k1": key}), sender="security", trust=trust),
        Metrics("security", registry),
        "security",
        roles={"connector": "connector"},
    )

    def report(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def sealed(msg_type: Any, payload: Any, envelope: Any) -> None:
        delta = payload.delta["w"]
        report(f"S {delta.numel() * delta.element_size()}")

    await consumer.subscribe(topo.queue("security").name, sealed)
    conn = await aio_pika.connect_robust(AMQP_URL)
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=int(os.environ[_ENV_PREFETCH]))
    queue = await channel.declare_queue(_raw_queue_name(topo), passive=True)

    async def raw(message: Any) -> None:
        await message.ack()
        report(f"R {len(message.body)}")

    await queue.consume(raw)
    report("READY")
    while (await asyncio.to_thread(sys.stdin.readline)).strip() not in ("STOP", ""):
        pass
    rejected = 0.0
    for metric in registry.collect():
        if metric.name == "pdmfed_messages_rejected":
            rejected += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    report(f"REJECTED {rejected}")
    await conn.close()
    await bus.close()


async def consume_raw_here(topo: Topology, counter: _Counter, prefetch: int) -> Any:
    """A plain aio-pika consumer of the raw twin queue in this process (acks, counts); returns
    its connection, to close."""
    import aio_pika

    conn = await aio_pika.connect_robust(AMQP_URL)
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue(_raw_queue_name(topo), passive=True)

    async def on_message(message: Any) -> None:
        await message.ack()
        await counter.hit(len(message.body))

    await queue.consume(on_message)
    return conn


# -- producer process: publishers, timing ----------------------------------------------------
class _Consumer:
    """The consumer process and the counters its stdout lines feed."""

    def __init__(self) -> None:
        self.sealed = _Counter()
        self.raw = _Counter()
        self.rejected: float | None = None
        self.proc: Any = None
        self._reader: asyncio.Task | None = None

    async def start(self, env: dict[str, str]) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.bench_broker",
            "--consumer",
            env={**os.environ, **env},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if line.strip() != b"READY":
            raise RuntimeError(f"consumer process did not start: {line[:200]!r}")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            kind, _, value = line.decode().strip().partition(" ")
            if kind == "S":
                await self.sealed.hit(int(value))
            elif kind == "R":
                await self.raw.hit(int(value))
            elif kind == "REJECTED":
                self.rejected = float(value)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.stdin.write(b"STOP\n")
            await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader


class _Sealed:
    """The connector's side: a SecureEndpoint publishing sealed update.raw messages."""

    def __init__(self, topo: Topology, counter: _Counter) -> None:
        self.key = os.urandom(32)
        self.identity = SigningIdentity.generate("connector")
        trust = TrustStore({"connector": self.identity.public_bytes()})
        self.pub_bus = RabbitBus(AMQP_URL, service="bench-producer", topology=topo)
        self.producer = SecureEndpoint(
            self.pub_bus,
            Sealer(
                KeyRing("k1", {"k1": self.key}),
                sender="connector",
                identity=self.identity,
                trust=trust,
            ),
            Metrics("bench-producer", CollectorRegistry()),
            "bench-producer",
        )
        self.counter = counter

    async def start(self) -> None:
        await self.pub_bus.start()  # declares the topology, the security queue included

    async def run_once(self, payload: dict, count: int) -> float:
        target = self.counter.count + count
        start = time.perf_counter()
        for _ in range(count):
            await self.producer.publish("update.raw", payload, datasite_id="factory_a", round_num=1)
        await self.counter.wait(target, RUN_TIMEOUT_S)
        return time.perf_counter() - start

    async def close(self) -> None:
        await self.pub_bus.close()


class _Raw:
    """Plain aio-pika: confirmed persistent mandatory publishes into a twin quorum queue."""

    def __init__(self, topo: Topology, counter: _Counter) -> None:
        self.topo = topo
        self.counter = counter

    async def start(self) -> None:
        import aio_pika

        self.pub_conn = await aio_pika.connect_robust(AMQP_URL)
        channel = await self.pub_conn.channel(publisher_confirms=True, on_return_raises=True)
        self.exchange = await channel.get_exchange(self.topo.exchange.name)
        # Its own quorum queue with the security queue's arguments, so the sealed consumer
        # never sees raw bytes (and vice versa).
        spec = self.topo.queue("security")
        declared = await channel.declare_queue(
            _raw_queue_name(self.topo), durable=True, arguments=spec.arguments()
        )
        await declared.bind(self.exchange, RAW_KEY)

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
        async with self.pub_conn.channel() as channel:
            await channel.queue_delete(_raw_queue_name(self.topo))
        await self.pub_conn.close()


class _CpuMeter:
    """CPU seconds (user + system) used by the publisher (this process), the consumer process
    and the local RabbitMQ node (beam.smp), read around each timed run."""

    ROLES = ("publisher", "consumer", "broker")

    def __init__(self, consumer_pid: int) -> None:
        self._procs = {
            "publisher": [psutil.Process()],
            "consumer": [psutil.Process(consumer_pid)],
            "broker": [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"],
        }

    @property
    def sees_broker(self) -> bool:
        """False when RabbitMQ runs elsewhere (its CPU is then not counted)."""
        return bool(self._procs["broker"])

    def read(self) -> dict[str, float]:
        out = {}
        for role, procs in self._procs.items():
            total = 0.0
            for proc in procs:
                try:
                    t = proc.cpu_times()
                except psutil.Error:  # a vanished process adds nothing
                    continue
                total += t.user + t.system
            out[role] = total
        return out


def _cpu_per_update(spent: dict[str, float], updates: int, wall_s: float) -> dict[str, Any]:
    """CPU milliseconds per update by role, and how busy the machine's cores were."""
    row: dict[str, Any] = {role: 1e3 * spent[role] / updates for role in _CpuMeter.ROLES}
    row["total"] = sum(row[role] for role in _CpuMeter.ROLES)
    row["cores_busy"] = sum(spent.values()) / wall_s
    return row


def _rates(times: list[float], count: int, size_mb: float) -> dict[str, Any]:
    row: dict[str, Any] = summary(times)
    row["updates_per_s"] = count / row["median_s"]
    row["mb_per_s"] = count * size_mb / row["median_s"]
    row["mb_per_s_min_max"] = [count * size_mb / row["max_s"], count * size_mb / row["min_s"]]
    return row


async def _run(plan: dict) -> dict[str, Any]:
    topo = Topology().with_prefix(bench_prefix(NAME))
    consumer = _Consumer()
    sealed = _Sealed(topo, consumer.sealed)
    await sealed.start()
    raw = _Raw(topo, consumer.raw)
    await raw.start()
    rows = []
    try:
        await consumer.start(
            {
                _ENV_KEY: sealed.key.hex(),
                _ENV_TRUST: sealed.identity.public_bytes().hex(),
                _ENV_PREFIX: topo.prefix,
                _ENV_PREFETCH: str(sealed.pub_bus.prefetch_count),  # as RabbitBus sizes it
            }
        )
        meter = _CpuMeter(consumer.proc.pid)
        for size_mb, count in plan["sizes"].items():
            size = int(size_mb * MB)
            payload = _payload(size)
            body = bytes(payload["delta"]["w"].numpy().tobytes())
            # warm-up both paths once, then alternate runs so drift hits both alike
            await raw.run_once(body, 1)
            await sealed.run_once(payload, 1)
            times: dict[str, list[float]] = {"raw": [], "sealed": []}
            spent = {kind: dict.fromkeys(_CpuMeter.ROLES, 0.0) for kind in times}
            for _ in range(plan["runs"]):
                for kind, run_once, item in (
                    ("raw", raw.run_once, body),
                    ("sealed", sealed.run_once, payload),
                ):
                    before = meter.read()
                    times[kind].append(await run_once(item, count))
                    after = meter.read()
                    for role in _CpuMeter.ROLES:
                        spent[kind][role] += after[role] - before[role]
            row = {
                "size_mb": size_mb,
                "updates_per_run": count,
                "sealed": _rates(times["sealed"], count, size_mb),
                "raw": _rates(times["raw"], count, size_mb),
            }
            row["ratio_sealed_vs_raw"] = row["sealed"]["mb_per_s"] / row["raw"]["mb_per_s"]
            if meter.sees_broker and all(sum(spent[k].values()) > 0 for k in spent):
                updates = count * plan["runs"]
                cpu = {k: _cpu_per_update(spent[k], updates, sum(times[k])) for k in times}
                row["cpu_ms_per_update"] = cpu
                # With every core busy, throughput is CPU per update over the cores: the ratio
                # then cannot exceed raw's CPU per update over sealed's.
                row["cpu_bound_ratio"] = cpu["raw"]["total"] / cpu["sealed"]["total"]
            rows.append(row)
            cpu_note = ""
            if "cpu_ms_per_update" in row:
                c = row["cpu_ms_per_update"]
                cpu_note = (
                    f"  CPU ms/update raw {c['raw']['total']:.1f} sealed {c['sealed']['total']:.1f}"
                    f" (cores busy {c['raw']['cores_busy']:.1f}/{c['sealed']['cores_busy']:.1f},"
                    f" CPU-bound ratio {row['cpu_bound_ratio']:.2f})"
                )
            print(
                f"{size_mb:>6} MB x{count:<3} sealed {row['sealed']['mb_per_s']:7.1f} MB/s"
                f" ({row['sealed']['updates_per_s']:6.1f}/s)  raw {row['raw']['mb_per_s']:7.1f}"
                f" MB/s  ratio {row['ratio_sealed_vs_raw']:.2f}{cpu_note}",
                flush=True,
            )
    finally:
        await consumer.stop()
        await raw.close()
        await sealed.close()
        cleanup = RabbitBus(AMQP_URL, service="bench-cleanup", topology=topo, declare=False)
        await cleanup.start()
        await cleanup.delete_topology()
        await cleanup.close()
    if consumer.rejected is None:
        raise RuntimeError(
            f"the consumer process ended without its report (exit {consumer.proc.returncode})"
        )
    return {"rows": rows, "rejected": consumer.rejected, "topology_prefix": topo.prefix}


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
        " prefetch as RabbitBus sizes it. CPU: user+system seconds of the publisher, the"
        " consumer process and the local RabbitMQ node (beam.smp) over the timed runs, per update;"
        " cpu_bound_ratio = raw's CPU per update / sealed's, the ratio's cap when every core is"
        " busy.",
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
    """Command line: [--smoke] [--out FILE]; --consumer runs the consumer process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--consumer"]:
        keep_freed_buffers()  # as every service process does at start
        asyncio.run(_consume())
        return 0
    return bench_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
