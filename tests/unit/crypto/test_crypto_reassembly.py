"""Chunk reassembly under attack: a compromised sender's claims never block another sender."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import torch
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.crypto.replay import InMemorySeenStore, ReplayGuard
from federation.errors import ChunkError, ExpiredError, OversizeMessage, PdmFedError, ReplayError
from federation.wire.chunking import chunk_bounds
from federation.wire.messages import MsgType

LIMIT = 64 * 1024  # max_message_bytes: chunks of at most ~62 KiB
GiB = 1024**3


class Fleet:
    """Two trusted senders (mallory holds a stolen but valid key) and one receiver."""

    def __init__(self, **assembler) -> None:
        self.keyring = KeyRing("k1", {"k1": os.urandom(32)})
        ids = {name: SigningIdentity.generate(name) for name in ("mallory", "honest")}
        trust = TrustStore({n: i.public_bytes() for n, i in ids.items()})
        self.sealers = {
            n: Sealer(self.keyring, sender=n, identity=i, max_message_bytes=LIMIT)
            for n, i in ids.items()
        }
        self.receiver = Sealer(
            self.keyring, sender="aggregator", trust=trust, max_message_bytes=LIMIT
        )
        for key, value in assembler.items():
            setattr(self.receiver.assembler, key, value)

    def claim(
        self, size: int, total: int, index: int = 0, sender: str = "mallory", uid: bytes = b""
    ) -> bytes:
        """One genuinely signed chunk that claims an update of ``size`` bytes in ``total`` chunks."""
        start, end = chunk_bounds(size, total, index)
        plaintext = os.urandom(end - start)
        chunk = {"update_id": uid or os.urandom(16), "index": index, "total": total, "size": size,
                 "sha256_all": "0" * 64}  # fmt: skip
        return self.sealers[sender]._seal_body(
            MsgType.UPDATE_RAW, [plaintext], len(plaintext), "", 0, chunk,
            hashlib.sha256(plaintext).hexdigest(),
        )  # fmt: skip

    def honest_update(self) -> list[bytes]:
        delta = {"w": torch.arange(100_000, dtype=torch.float32)}
        return self.sealers["honest"].seal("update.raw", {"delta": delta})

    def deliver_honest(self) -> dict:
        bodies = self.honest_update()
        assert len(bodies) >= 7
        results = [self.receiver.open(b) for b in bodies]
        assert all(r is None for r in results[:-1])
        return results[-1].payload


def test_when_one_small_chunk_claims_2_gib__it_books_only_its_bytes_and_others_still_arrive():
    fleet = Fleet()
    body = fleet.claim(2 * GiB, 65536)  # ~33 KB on the wire
    assert len(body) < 40_000
    assert fleet.receiver.open(body) is None
    assert fleet.receiver.assembler.inflight_bytes <= 40_000, "the claim booked its whole size"
    payload = fleet.deliver_honest()
    assert torch.equal(payload["delta"]["w"], torch.arange(100_000, dtype=torch.float32))


def test_when_the_campaign_caps_updates__a_larger_claim_is_refused_on_first_sight():
    fleet = Fleet()
    fleet.receiver.assembler.limit_update_bytes("campaign-1", 1024 * 1024)
    with pytest.raises(OversizeMessage, match="largest update"):
        fleet.receiver.open(fleet.claim(2 * GiB, 65536))
    assert fleet.receiver.assembler.pending == 0
    assert fleet.receiver.assembler.refusals["mallory"] == 1
    fleet.deliver_honest()
    assert fleet.receiver.assembler.refusals.get("honest", 0) == 0


def test_when_one_sender_opens_many_tiny_claims__it_only_fills_its_own_slots():
    fleet = Fleet()
    for _ in range(40):
        try:
            fleet.receiver.open(fleet.claim(2, 2))
        except PdmFedError:  # past its own budget mallory may be refused: never anyone else
            pass
    fleet.deliver_honest()
    open_per_sender = fleet.receiver.assembler.pending_by_sender()
    assert open_per_sender["mallory"] <= fleet.receiver.assembler.updates_per_sender


def test_when_a_sender_goes_over_its_byte_budget__its_own_oldest_update_goes_first():
    fleet = Fleet(sender_budget_bytes=500_000)
    size, total = 32 * 60_000, 32
    first, second = os.urandom(16), os.urandom(16)
    for index in range(8):  # 480 kB held for mallory's first update
        fleet.receiver.open(fleet.claim(size, total, index, uid=first))
    fleet.receiver.open(fleet.claim(size, total, 0, uid=second))
    assert fleet.receiver.assembler.committed_by_sender()["mallory"] <= 500_000
    assert fleet.receiver.assembler.pending_by_sender() == {"mallory": 1}
    assert fleet.receiver.assembler.refusals["mallory"] == 1
    with pytest.raises(ChunkError, match="evicted"):
        fleet.receiver.open(fleet.claim(size, total, 8, uid=first))
    fleet.deliver_honest()


def test_when_an_incomplete_update_times_out__a_timer_frees_it_without_waiting_for_a_chunk():
    fleet = Fleet(timeout_s=0.3)
    expired: list[tuple[str, Exception]] = []
    fleet.receiver.assembler.on_refused = lambda sender, err: expired.append((sender, err))
    assert fleet.receiver.open(fleet.claim(10 * 1024 * 1024, 200)) is None
    assert fleet.receiver.assembler.pending == 1
    deadline = time.monotonic() + 5.0
    while fleet.receiver.assembler.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fleet.receiver.assembler.pending == 0, "nothing expired the update on a timer"
    assert fleet.receiver.assembler.inflight_bytes == 0
    assert [s for s, _ in expired] == ["mallory"]
    assert isinstance(expired[0][1], ChunkError) and expired[0][1].reason == "expired"


def test_when_a_captured_first_chunk_is_replayed_after_a_restart__it_books_and_evicts_nothing():
    """The seen-id store outlives the consumer (Redis in production); the assembler does not.

    A replayed chunk 0 must be refused before it reaches the assembler: booked even for the
    moment of its decryption, it would open an update for its sender and evict that sender's
    genuine update in flight (one open update per sender here, to show it with one replay).
    """
    fleet = Fleet()
    store = InMemorySeenStore()
    fleet.receiver.replay = ReplayGuard(store)
    captured = fleet.honest_update()
    for body in captured:
        fleet.receiver.open(body)

    restarted = Sealer(fleet.keyring, sender="aggregator", trust=fleet.receiver.trust,
                       max_message_bytes=LIMIT, replay=ReplayGuard(store))  # fmt: skip
    restarted.assembler.updates_per_sender = 1
    reserved = []
    reserve = restarted.assembler.reserve
    restarted.assembler.reserve = lambda *a, **kw: reserved.append(a) or reserve(*a, **kw)
    in_flight = fleet.honest_update()
    for body in in_flight[:-1]:
        assert restarted.open(body) is None
    calls = len(reserved)

    with pytest.raises(ReplayError):
        restarted.open(captured[0])
    assert len(reserved) == calls, "a replayed chunk reached the assembler"
    assert restarted.assembler.refusals.get("honest", 0) == 0
    opened = restarted.open(in_flight[-1])
    assert opened is not None, "the genuine update in flight was lost to a replay"
    assert torch.equal(opened.payload["delta"]["w"], torch.arange(100_000, dtype=torch.float32))


def test_when_a_stale_or_seen_body_arrives__it_is_refused_before_decryption(monkeypatch):
    fleet = Fleet()
    (body,) = fleet.sealers["honest"].seal("update.raw", {"delta": {"w": torch.ones(4)}})
    assert fleet.receiver.open(body) is not None
    decrypted = []
    monkeypatch.setattr(Sealer, "_decrypt", staticmethod(lambda *a: decrypted.append(a)))
    with pytest.raises(ReplayError):
        fleet.receiver.open(body)
    fleet.receiver.replay = ReplayGuard(InMemorySeenStore(), 630.0, clock=lambda: time.time() + 700)
    with pytest.raises(ExpiredError):
        fleet.receiver.open(body)
    assert decrypted == []
