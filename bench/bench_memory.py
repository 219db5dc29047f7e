"""Peak RSS of a consumer (fresh subprocess) receiving one large chunked update over RabbitMQ.

Run: ``.venv/bin/python -m bench.bench_memory [--smoke] [--out PATH]``.
The parent seals a float32 update.raw of the given size (8 MiB sealed chunks) and publishes it;
a fresh child process consumes it through RabbitBus + SecureEndpoint (every check, typed
payload) and reports its RSS before the update arrived (baseline: interpreter, torch, broker
connection) and its peak RSS (ru_maxrss) after the handler saw the whole update.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from federation.runtime.allocator import keep_freed_buffers

from bench._common import write_result
from bench._util import AMQP_URL, bench_prefix, rabbit_available, result_path

NAME = "memory"
MB = 1024 * 1024
FULL_SIZES_MB = [500]
SMOKE_SIZES_MB = [16]
CHILD_TIMEOUT_S = 600.0
TARGET_RATIO = 2.5
#: Environment variables that carry the run's keys to the child (never argv, never logged).
_ENV_KEY = "PDMFED_BENCH_KEY_HEX"
_ENV_TRUST = "PDMFED_BENCH_TRUST_HEX"
_ENV_PREFIX = "PDMFED_BENCH_PREFIX"


# -- child: the consumer under measurement -----------------------------------------------
async def _consume_one() -> dict[str, Any]:
    from federation.bus.middleware import SecureEndpoint
    from federation.bus.rabbitmq import RabbitBus
    from federation.bus.topology import Topology
    from federation.crypto import KeyRing, Sealer, TrustStore

    from bench._util import current_rss_bytes, peak_rss_bytes

    topo = Topology().with_prefix(os.environ[_ENV_PREFIX])
    key = bytes.fromhex(os.environ[_ENV_KEY])
    trust = TrustStore({"connector": bytes.fromhex(os.environ[_ENV_TRUST])})
    bus = RabbitBus(AMQP_URL, service="security", topology=topo, declare=False)
    await bus.start()
    endpoint = SecureEndpoint(
        bus,
        Sealer(KeyRing("k1", {"k1": key}), sender="security", trust=trust),
        None,
        "security",
        roles={"connector": "connector"},
    )
    done = asyncio.Event()
    seen: dict[str, Any] = {}

    async def handler(msg_type: Any, payload: Any, envelope: Any) -> None:
        delta = payload.delta["w"]
        seen["received_bytes"] = delta.numel() * delta.element_size()
        seen["peak_rss_in_handler"] = peak_rss_bytes()
        done.set()

    await endpoint.subscribe(topo.queue("security").name, handler)
    baseline = current_rss_bytes()
    baseline_peak = peak_rss_bytes()
    print("READY", flush=True)
    start = time.perf_counter()
    await asyncio.wait_for(done.wait(), CHILD_TIMEOUT_S)
    seconds = time.perf_counter() - start
    await bus.close()
    return {
        "baseline_rss_bytes": baseline,
        "baseline_peak_rss_bytes": baseline_peak,
        "peak_rss_bytes": peak_rss_bytes(),
        "receive_seconds": seconds,
        **seen,
    }


def _child_main() -> int:
    print(json.dumps(asyncio.run(_consume_one())), flush=True)
    return 0


# -- parent: producer and bookkeeping ----------------------------------------------------
async def _measure(size_mb: float) -> dict[str, Any]:
    import torch
    from federation.bus.middleware import SecureEndpoint
    from federation.bus.rabbitmq import RabbitBus
    from federation.bus.topology import Topology
    from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore

    topo = Topology().with_prefix(bench_prefix(NAME))
    key = os.urandom(32)
    ident = SigningIdentity.generate("connector")
    trust = TrustStore({"connector": ident.public_bytes()})
    bus = RabbitBus(AMQP_URL, service="bench-producer", topology=topo)
    await bus.start()
    sealer = Sealer(KeyRing("k1", {"k1": key}), sender="connector", identity=ident, trust=trust)
    producer = SecureEndpoint(bus, sealer, None, "bench-producer")
    env = {
        **os.environ,
        _ENV_KEY: key.hex(),
        _ENV_TRUST: ident.public_bytes().hex(),
        _ENV_PREFIX: topo.prefix,
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_memory",
        "--child",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 120)
        if line.strip() != b"READY":
            raise RuntimeError(f"consumer did not start: {line[:200]!r}")
        size = int(size_mb * MB)
        payload = {
            "campaign_id": "bench",
            "round_num": 1,
            "datasite_id": "factory_a",
            "model_version": 0,
            "delta": {"w": torch.randn(size // 4)},
            "num_samples": 1,
            "metrics": {},
        }
        chunks = await producer.publish("update.raw", payload, datasite_id="factory_a", round_num=1)
        del payload
        out, _ = await asyncio.wait_for(child.communicate(), CHILD_TIMEOUT_S)
        if child.returncode != 0:
            raise RuntimeError(f"consumer exited with {child.returncode}")
        report = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await bus.delete_topology()
        await bus.close()
    report["update_bytes"] = size
    report["size_mb"] = size_mb
    report["chunks"] = chunks
    report["peak_over_update"] = report["peak_rss_bytes"] / size
    report["peak_minus_baseline_over_update"] = (
        report["peak_rss_bytes"] - report["baseline_rss_bytes"]
    ) / size
    return report


def run(smoke: bool) -> dict[str, Any]:
    base = {
        "smoke": smoke,
        "method": "one fresh consumer process per size; baseline = RSS after imports, broker"
        " connection and subscribe; peak = ru_maxrss after the handler got the full"
        " update (8 MiB sealed chunks, RabbitBus prefetch 8). Single measurement per size:"
        " peak RSS is a high-water mark, not a timing.",
        "targets": {"peak_over_update_max": TARGET_RATIO},
    }
    reason = asyncio.run(rabbit_available())
    if reason is not None:
        return {**base, "error": reason, "results": []}
    results = []
    for size_mb in SMOKE_SIZES_MB if smoke else FULL_SIZES_MB:
        row = asyncio.run(_measure(size_mb))
        results.append(row)
        print(
            f"{size_mb:>6} MB update: consumer peak {row['peak_rss_bytes'] / MB:8.0f} MB"
            f" (baseline {row['baseline_rss_bytes'] / MB:.0f} MB) ratio"
            f" {row['peak_over_update']:.2f} / above baseline"
            f" {row['peak_minus_baseline_over_update']:.2f}",
            flush=True,
        )
    last = results[-1]
    return {
        **base,
        "results": results,
        "summary": {
            "peak_over_update": last["peak_over_update"],
            "peak_minus_baseline_over_update": last["peak_minus_baseline_over_update"],
            "target_met": last["peak_over_update"] <= TARGET_RATIO,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a 16 MB update, seconds")
    parser.add_argument("--out", type=Path, default=None, help="result file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    keep_freed_buffers()  # as every service process does at start
    if args.child:
        return _child_main()
    data = run(args.smoke)
    path = write_result(NAME, data, args.out or result_path(NAME, args.smoke))
    print(f"wrote {path}")
    return 0 if "error" not in data else 2


if __name__ == "__main__":
    sys.exit(main())
