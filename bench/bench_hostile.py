"""Hostile input at the consumer: what refusing forged bodies costs, before and after, side by side.

Run: ``.venv/bin/python -m bench.bench_hostile [--smoke] [--out PATH]``.

1. Refusal cost per body. For each size, a genuine update.raw body is opened (every check, typed
   payload) and hostile bodies of the same size are refused: by the envelope v1 decoder this
   project had before (``bench/_envelope_v1.py``, kept for this comparison only) and by the
   current opener (``Sealer.open``, envelope v2; there also the genuine body replayed). Time is
   a median of repeated calls; memory is the tracemalloc peak of one call (Python objects and
   numpy buffers it allocated). Ratio = refusal / genuine open of the same size (the lower of
   two medians, timed before and after the refusals); target ≤ 2.
2. Chunk reassembly under one sender's claims (a stolen key). Before = the assembler this
   project had (``bench/_chunking_v1.py``); after = the current one, without and with the
   campaign's update cap. Figures: bytes booked by the claims, whether another sender's
   genuine chunked update still arrives, and whether incomplete claims are freed with no
   further traffic.
3. The event loop under hostile traffic (real RabbitMQ). Hostile bodies and then one genuine
   message wait in a queue; a SecureEndpoint subscribes and a probe measures the loop's longest
   stall (wall clock: a 1 ms timer's longest gap), the CPU time of its longest callback (thread
   time: what the consumer itself blocked the loop for, whatever else the shared machine ran)
   and the genuine message's latency from subscribe to handler. Before = the same consumer
   whose sealer first runs the v1 decoder on a body that is not v2; quiet = the genuine
   message alone. Target: no stall > 50 ms, judged on the longest callback (the wall-clock
   stall is reported beside it with the machine's load).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import torch
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.crypto.replay import InMemorySeenStore, ReplayGuard
from federation.errors import PdmFedError
from federation.wire.chunking import ChunkAssembler, chunk_bounds
from federation.wire.envelope import WIRE_MAGIC, Envelope, decode_envelope, encode_envelope
from federation.wire.messages import MsgType

from bench._chunking_v1 import ChunkAssemblerV1
from bench._envelope_v1 import decode_envelope_v1
from bench._util import AMQP_URL, bench_main, bench_prefix, rabbit_available, timed_adaptive

NAME = "hostile"
KiB = 1024
MiB = 1024 * 1024
FULL_SIZES = [64 * KiB, 512 * KiB, 2 * MiB, 8 * MiB]
SMOKE_SIZES = [16 * KiB, 64 * KiB]
TARGET_RATIO = 2.0
TARGET_STALL_S = 0.050
SENDER = "connector"


# -- the parties ------------------------------------------------------------------------------
class Parties:
    """A genuine sender and a receiver sharing one key ring; the attacker holds neither key."""

    def __init__(self, max_message_bytes: int = 8 * MiB) -> None:
        self.keyring = KeyRing("k1", {"k1": os.urandom(32)})
        self.identity = SigningIdentity.generate(SENDER)
        self.trust = TrustStore({SENDER: self.identity.public_bytes()})
        self.max_message_bytes = max_message_bytes
        self.sender = Sealer(
            self.keyring, sender=SENDER, identity=self.identity, max_message_bytes=max_message_bytes
        )

    def receiver(self, cls: type[Sealer] = Sealer) -> Sealer:
        return cls(
            self.keyring,
            sender="security",
            trust=self.trust,
            max_message_bytes=self.max_message_bytes,
        )

    def genuine(self, size: int, fill: int = 0) -> bytes:
        """A sealed update.raw body of at most ``size`` bytes (one float32 tensor)."""
        n = max(1, (size - 4 * KiB) // 4)
        delta = {"w": torch.full((n,), float(fill))}
        payload = {"campaign_id": "bench", "round_num": 1, "datasite_id": "factory_a",
                   "model_version": 0, "delta": delta, "num_samples": 1, "metrics": {}}  # fmt: skip
        (body,) = self.sender.seal("update.raw", payload, datasite_id="factory_a", round_num=1)
        return body


# -- hostile bodies (no key needed) -----------------------------------------------------------
def bomb_v1(size: int) -> bytes:
    """A msgpack map whose first value is an array of empty maps: v1 built one dict per byte."""
    head = b"\x81" + msgpack.packb("security_version") + b"\xdd"
    n = size - len(head) - 4
    return head + n.to_bytes(4, "big") + b"\x80" * n


def random_body(size: int) -> bytes:
    """Bytes from the void."""
    return os.urandom(size)


def forged_v2(parties: Parties, size: int) -> bytes:
    """A well-formed v2 header naming a trusted sender, random ciphertext, a wrong signature."""
    probe = Envelope(msg_type="update.raw", msg_id=os.urandom(16), sender=SENDER, key_id="k1",
                     timestamp=time.time(), nonce=os.urandom(12), encrypted_data=bytes(16),
                     checksum="0" * 64, signature=bytes(64))  # fmt: skip
    overhead = len(encode_envelope(probe)) - 16
    return encode_envelope(
        Envelope(
            **{
                **probe.to_dict(),
                "encrypted_data": os.urandom(size - overhead),
                "signature": _wrong_signature(),
            }
        )  # fmt: skip
    )


def _wrong_signature() -> bytes:
    """64 random bytes shaped like a real Ed25519 signature (S < 2**252): verification runs in
    full before it fails (an unreduced S, as most random bytes have, is refused early)."""
    raw = bytearray(os.urandom(64))
    raw[63] &= 0x0F
    return bytes(raw)


def tampered_v2(genuine: bytes) -> bytes:
    """A genuine body (valid signature) with one ciphertext byte flipped: refused after AES-GCM."""
    body = bytearray(genuine)
    body[len(body) // 2] ^= 0x01
    return bytes(body)


# -- section 1: cost per body -----------------------------------------------------------------
def _allocated_peak(fn: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of one call (tracemalloc: Python objects, numpy buffers)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()


def _refuse(fn: Callable[[bytes], Any], body: bytes) -> Callable[[], str]:
    def call() -> str:
        try:
            fn(body)
        except PdmFedError as err:
            return err.reason
        raise AssertionError("a hostile body was accepted")

    return call


def _cell(call: Callable[[], Any], budget_s: float) -> dict[str, Any]:
    timing, result = timed_adaptive(call, runs=5, budget_s=budget_s)
    return {**timing, "peak_alloc_bytes": _allocated_peak(call), "refused_as": result}


def _per_size(parties: Parties, size: int, budget_s: float) -> dict[str, Any]:
    body = parties.genuine(size)
    receiver = parties.receiver()

    def open_fresh(data: bytes) -> Any:
        # The same bodies again and again: each call with a replay store that has seen none of
        # them (the tampered body keeps the genuine msg_id: it must reach AES-GCM, not the
        # replay check).
        receiver.replay = ReplayGuard(InMemorySeenStore(), 630.0)
        return receiver.open(data, expected_msg_type="update.raw")

    def open_genuine() -> None:
        assert open_fresh(body) is not None

    genuine = _cell(open_genuine, budget_s)
    genuine.pop("refused_as")
    hostile = {
        "bomb_v1": bomb_v1(len(body)),
        "random": random_body(len(body)),
        "forged_v2": forged_v2(parties, len(body)),
        "tampered_v2": tampered_v2(body),
    }
    assert all(len(h) == len(body) for h in hostile.values())
    before = {k: _cell(_refuse(decode_envelope_v1, h), budget_s) for k, h in hostile.items()
              if not h.startswith(WIRE_MAGIC)}  # fmt: skip
    after = {k: _cell(_refuse(open_fresh, h), budget_s) for k, h in hostile.items()}
    # A captured genuine body sent again: refused by the replay precheck, before decryption.
    seen = ReplayGuard(InMemorySeenStore(), 630.0)
    first = decode_envelope(body)
    seen.check(first.msg_id, first.timestamp)

    def open_replayed(data: bytes) -> Any:
        receiver.replay = seen
        return receiver.open(data, expected_msg_type="update.raw")

    after["replayed_v2"] = _cell(_refuse(open_replayed, body), budget_s)
    # Timed again after the refusals: on shared cores the load drifts, and the lower of the
    # two medians makes the ratio the harder one to meet.
    again = _cell(open_genuine, budget_s)
    genuine["median_s_before_refusals"] = genuine["median_s"]
    genuine["median_s_after_refusals"] = again["median_s"]
    genuine["median_s"] = min(genuine["median_s"], again["median_s"])
    row: dict[str, Any] = {"body_bytes": len(body), "genuine_open": genuine}
    for side, cells in (("before", before), ("after", after)):
        worst_t = max(cells, key=lambda k: cells[k]["median_s"])
        worst_m = max(cells, key=lambda k: cells[k]["peak_alloc_bytes"])
        row[side] = {
            "refusals": cells,
            "worst_time": worst_t,
            "time_ratio": cells[worst_t]["median_s"] / genuine["median_s"],
            "worst_memory": worst_m,
            "memory_ratio": cells[worst_m]["peak_alloc_bytes"]
            / max(genuine["peak_alloc_bytes"], 1),
        }
    row["after"]["target_met"] = (
        row["after"]["time_ratio"] <= TARGET_RATIO and row["after"]["memory_ratio"] <= TARGET_RATIO
    )
    return row


# -- section 3: the event loop while hostile bodies arrive -------------------------------------
class V1FrontSealer(Sealer):
    """The consumer as it was: the v1 decoder read every body before any check."""

    def open(self, body: Any, **kw: Any) -> Any:
        if not bytes(body[:4]) == WIRE_MAGIC:
            decode_envelope_v1(body, max_bytes=self.max_message_bytes)
        return super().open(body, **kw)


class LoopProbe:
    """Measures how long the event loop goes without running a 1 ms timer (wall clock), and the
    CPU time of the loop's longest callback (thread time: what this process itself blocked the
    loop for, whatever else the shared machine was running)."""

    def __init__(self) -> None:
        self.max_stall_s = 0.0
        self.max_callback_cpu_s = 0.0
        self.longest_callback = ""
        self._task: asyncio.Task[None] | None = None
        self._run_handle: Any = None

    def _timed_run(self, handle: asyncio.Handle) -> None:
        start = time.thread_time()
        try:
            self._run_handle(handle)
        finally:
            cpu = time.thread_time() - start
            if cpu > self.max_callback_cpu_s:
                self.max_callback_cpu_s = cpu
                self.longest_callback = _callback_name(handle)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.001)
            self.max_stall_s = max(self.max_stall_s, loop.time() - start - 0.001)

    def start(self) -> None:
        self._run_handle = asyncio.Handle._run
        probe = self
        asyncio.Handle._run = lambda handle: probe._timed_run(handle)  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        asyncio.Handle._run = self._run_handle  # type: ignore[method-assign]
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _callback_name(handle: asyncio.Handle) -> str:
    """The coroutine (for a task step) or function a loop callback runs."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if owner is not None and hasattr(owner, "get_coro"):
        return getattr(owner.get_coro(), "__qualname__", repr(owner))
    return getattr(callback, "__qualname__", repr(callback))


async def _scenario(parties: Parties, hostile: list[bytes], sealer_cls: type[Sealer]) -> dict:
    from federation.bus.middleware import SecureEndpoint
    from federation.bus.rabbitmq import RabbitBus
    from federation.bus.topology import Topology
    from federation.monitoring.metrics import Metrics
    from prometheus_client import CollectorRegistry

    topo = Topology().with_prefix(bench_prefix(NAME))
    bus = RabbitBus(AMQP_URL, service="security", topology=topo)
    await bus.start()
    try:
        for body in hostile:
            await bus.publish("update.raw", body)
        await bus.publish("update.raw", parties.genuine(64 * KiB))
        registry = CollectorRegistry()
        endpoint = SecureEndpoint(
            bus,
            parties.receiver(sealer_cls),
            Metrics("security", registry),
            "security",
            roles={SENDER: "connector"},
        )
        got = asyncio.Event()
        probe = LoopProbe()
        probe.start()
        start = time.perf_counter()
        latency: list[float] = []

        async def handler(msg_type: Any, payload: Any, envelope: Any) -> None:
            latency.append(time.perf_counter() - start)
            got.set()

        await endpoint.subscribe(topo.queue("security").name, handler)
        await asyncio.wait_for(got.wait(), 900)
        await probe.stop()
        rejected = sum(
            s.value
            for m in registry.collect()
            if m.name == "pdmfed_messages_rejected"
            for s in m.samples
            if s.name.endswith("_total")
        )
        return {"genuine_latency_s": latency[0], "max_stall_s": probe.max_stall_s,
                "max_callback_cpu_s": probe.max_callback_cpu_s,
                "longest_callback": probe.longest_callback,
                "hostile": len(hostile), "rejected": rejected}  # fmt: skip
    finally:
        await bus.delete_topology()
        await bus.close()


async def _stalls(parties: Parties, sizes: tuple[int, int], count: int) -> dict[str, Any]:
    small, large = sizes
    hostile = (
        [bomb_v1(small) for _ in range(count)]
        + [forged_v2(parties, large) for _ in range(count)]
        + [random_body(large) for _ in range(count)]
    )
    out: dict[str, Any] = {
        "hostile_bodies": {
            f"bomb_v1 {small // KiB} KiB": count,
            f"forged_v2 {large // KiB} KiB": count,
            f"random {large // KiB} KiB": count,
        },  # fmt: skip
    }
    for name, bodies, cls, repeats in (
        ("quiet", [], Sealer, 3),
        ("before", hostile, V1FrontSealer, 1),
        ("after", hostile, Sealer, 3),
    ):
        runs = [await _scenario(parties, bodies, cls) for _ in range(repeats)]
        longest = max(runs, key=lambda r: r["max_callback_cpu_s"])
        out[name] = {
            "genuine_latency_s": statistics.median(r["genuine_latency_s"] for r in runs),
            "max_stall_s": max(r["max_stall_s"] for r in runs),
            "max_callback_cpu_s": longest["max_callback_cpu_s"],
            "longest_callback": longest["longest_callback"],
            "rejected": runs[-1]["rejected"],
            "runs": repeats,
            "load_avg_1m": os.getloadavg()[0],
        }
        print(f"  {name:6}: genuine latency {out[name]['genuine_latency_s'] * 1e3:9.1f} ms,"
              f" longest stall {out[name]['max_stall_s'] * 1e3:8.1f} ms, longest callback"
              f" {out[name]['max_callback_cpu_s'] * 1e3:8.1f} ms CPU ({longest['longest_callback']}),"
              f" load {out[name]['load_avg_1m']:.1f}", flush=True)  # fmt: skip
    # The target is on what the consumer itself blocks the loop for: on two shared cores the
    # wall-clock stall also holds the time other processes had the CPU (both are reported).
    out["after"]["target_met"] = out["after"]["max_callback_cpu_s"] <= TARGET_STALL_S
    out["after"]["wall_target_met"] = out["after"]["max_stall_s"] <= TARGET_STALL_S
    return out


# -- section 2: chunk reassembly under one sender's claims --------------------------------------
class V1Assembler(ChunkAssemblerV1):
    """The old assembler behind the current sealer's call (it had no per-sender accounting)."""

    def reserve(self, origin: Any, chunk: Any, msg_id: bytes = b"", *, sender: Any = None) -> Any:
        return super().reserve(origin, chunk, msg_id)


def _claim(sealer: Sealer, size: int, total: int) -> bytes:
    """A signed first chunk (stolen key) claiming an update of ``size`` bytes."""
    start, end = chunk_bounds(size, total, 0)
    plaintext = os.urandom(end - start)
    chunk = {"update_id": os.urandom(16), "index": 0, "total": total, "size": size,
             "sha256_all": "0" * 64}  # fmt: skip
    digest = hashlib.sha256(plaintext).hexdigest()
    return sealer._seal_body(MsgType.UPDATE_RAW, [plaintext], len(plaintext), "", 0, chunk, digest)


def _reassembly(side: str, attack: str, honest_bytes: int, timeout_s: float) -> dict[str, Any]:
    chunk_limit = 1 * MiB
    keyring = KeyRing("k1", {"k1": os.urandom(32)})
    ids = {n: SigningIdentity.generate(n) for n in ("mallory", "honest")}
    trust = TrustStore({n: i.public_bytes() for n, i in ids.items()})
    senders = {n: Sealer(keyring, sender=n, identity=i, max_message_bytes=chunk_limit)
               for n, i in ids.items()}  # fmt: skip
    if side == "before":
        assembler: Any = V1Assembler(max_chunk_bytes=chunk_limit, timeout_s=timeout_s)
    else:
        assembler = ChunkAssembler(max_chunk_bytes=chunk_limit, timeout_s=timeout_s)
        if side == "after, campaign cap":  # the largest update of the campaign's model
            assembler.limit_update_bytes("campaign", honest_bytes + 2 * MiB)
    receiver = Sealer(keyring, sender="aggregator", trust=trust, max_message_bytes=chunk_limit,
                      assembler=assembler)  # fmt: skip
    claims = (
        [_claim(senders["mallory"], 2 * 1024**3, 65536)]
        if attack == "one 2 GiB claim"
        else [_claim(senders["mallory"], 64, 2) for _ in range(16)]
    )
    refused = 0
    for body in claims:
        try:
            receiver.open(body)
        except PdmFedError:
            refused += 1
    row: dict[str, Any] = {
        "attack_bytes_on_wire": sum(len(b) for b in claims),
        "attack_chunks_refused": refused,
        "booked_bytes_after_attack": assembler.inflight_bytes,
    }
    delta = {"w": torch.zeros(honest_bytes // 4)}
    bodies = senders["honest"].seal("update.raw", {"delta": delta})
    start = time.perf_counter()
    try:
        results = [receiver.open(b) for b in bodies]
        row["honest_delivered"] = results[-1] is not None
    except PdmFedError as err:
        row["honest_delivered"] = False
        row["honest_refused_as"] = f"{type(err).__name__}: {err}"[:160]
    row["honest_seconds"] = time.perf_counter() - start
    pending = assembler.pending
    waited = time.perf_counter()
    while assembler.pending and time.perf_counter() - waited < 3 * timeout_s + 1.0:
        time.sleep(0.01)
    row["pending_after_attack"] = pending
    row["pending_after_3x_timeout_no_traffic"] = assembler.pending
    row["freed_after_s"] = None if assembler.pending else time.perf_counter() - waited
    return row


def _reassembly_table(smoke: bool) -> dict[str, Any]:
    honest = 2 * MiB if smoke else 8 * MiB
    timeout_s = 0.5
    rows = []
    for attack in ("one 2 GiB claim", "16 tiny claims"):
        for side in ("before", "after", "after, campaign cap"):
            row = {"attack": attack, "side": side, **_reassembly(side, attack, honest, timeout_s)}
            rows.append(row)
            print(f"  {attack:16} {side:20} booked {row['booked_bytes_after_attack']:>12,}"
                  f" honest delivered {row['honest_delivered']!s:5}"
                  f" pending after 3x timeout {row['pending_after_3x_timeout_no_traffic']}",
                  flush=True)  # fmt: skip
    return {"honest_update_bytes": honest, "timeout_s": timeout_s, "chunk_bytes": MiB,
            "rows": rows}  # fmt: skip


def run(smoke: bool) -> dict[str, Any]:
    parties = Parties()
    sizes = SMOKE_SIZES if smoke else FULL_SIZES
    budget = 0.5 if smoke else 3.0
    rows = []
    for size in sizes:
        row = _per_size(parties, size, budget)
        rows.append(row)
        b, a = row["before"], row["after"]
        print(
            f"{size / MiB:6.2f} MiB: genuine open {row['genuine_open']['median_s'] * 1e3:8.2f} ms;"
            f" before worst {b['time_ratio']:8.1f}x time {b['memory_ratio']:8.1f}x memory"
            f" ({b['worst_time']}); after worst {a['time_ratio']:5.2f}x time"
            f" {a['memory_ratio']:5.2f}x memory ({a['worst_time']})",
            flush=True,
        )
    doc: dict[str, Any] = {
        "smoke": smoke,
        "method": "Section 1: one process, no broker; time = median of repeated calls after a"
        " warm-up (timed_adaptive), memory = tracemalloc peak of one call; the genuine open"
        " is the current opener (every check, typed payload) in both columns. Section 2: real"
        " RabbitMQ, hostile bodies queued ahead of one genuine 64 KiB message, then a"
        " SecureEndpoint subscribes; stall = longest gap of a 1 ms timer.",
        "targets": {"refusal_over_genuine_max": TARGET_RATIO, "stall_max_s": TARGET_STALL_S},
        "sizes": rows,
        "summary": {
            "before_worst_time_ratio": max(r["before"]["time_ratio"] for r in rows),
            "before_worst_memory_ratio": max(r["before"]["memory_ratio"] for r in rows),
            "after_worst_time_ratio": max(r["after"]["time_ratio"] for r in rows),
            "after_worst_memory_ratio": max(r["after"]["memory_ratio"] for r in rows),
        },
    }
    doc["summary"]["refusal_target_met"] = all(r["after"]["target_met"] for r in rows)
    print("chunk reassembly under one sender's claims:", flush=True)
    doc["reassembly"] = _reassembly_table(smoke)
    reason = asyncio.run(rabbit_available())
    if reason is not None:
        doc["stall_error"] = reason
        return doc
    stall_sizes = (16 * KiB, 64 * KiB) if smoke else (2 * MiB, 8 * MiB)
    print("event loop under hostile traffic:", flush=True)
    doc["stall"] = asyncio.run(_stalls(parties, stall_sizes, 1 if smoke else 5))
    return doc


def main(argv: list[str] | None = None) -> int:
    return bench_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
