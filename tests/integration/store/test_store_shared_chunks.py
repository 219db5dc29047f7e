"""Replicas on one PostgreSQL schema: chunks of one update meet in the store, outbox rows go out once."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import torch
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.errors import ChunkError
from federation.runtime.service import Service, ServiceRunner, handled_id
from federation.runtime.shared_chunks import SharedChunkAssembler, drop_assembly
from federation.wire.envelope import decode_envelope

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024  # small messages: a 1 MB update is ~16 chunks


@pytest.fixture
def replicas(pg_url, tmp_path):
    """Factory of (store, receiving sealer) pairs sharing one schema and blob directory."""
    from federation.runtime.store_postgres import PostgresStore

    ring = KeyRing("k1", {"k1": os.urandom(32)})
    ident = SigningIdentity.generate("connector")
    trust = TrustStore({"connector": ident.public_bytes()})
    sender = Sealer(ring, sender="connector", identity=ident, max_message_bytes=LIMIT)
    opened = []

    def _open():
        store = PostgresStore(pg_url, schema="pdmfed_security", blob_dir=tmp_path / "blobs")
        opened.append(store)
        receiver = Sealer(ring, sender="security", trust=trust, max_message_bytes=LIMIT)
        receiver.assembler = SharedChunkAssembler(store, max_chunk_bytes=LIMIT)
        return store, receiver

    yield sender, _open
    for store in opened:
        store.close()


def _update(seed: int = 0, floats: int = 256 * 1024) -> dict:
    delta = torch.randn(floats, generator=torch.Generator().manual_seed(seed))
    return {
        "campaign_id": "c1",
        "round_num": 1,
        "datasite_id": "f1",
        "model_version": 0,
        "delta": {"w": delta},
        "num_samples": 7,
        "metrics": {},
    }


def test_when_the_chunks_of_one_update_reach_two_replicas__exactly_one_completes_it(replicas):
    sender, open_replica = replicas
    (store_a, a), (_, b) = open_replica(), open_replica()
    update = _update()
    bodies = sender.seal("update.raw", update, datasite_id="f1", round_num=1)
    assert len(bodies) > 8
    opened = [(a if i % 2 else b).open(body) for i, body in enumerate(bodies)]
    complete = [o for o in opened if o is not None]
    assert len(complete) == 1  # only the chunk that completed it, on whichever replica
    assert torch.equal(complete[0].payload["delta"]["w"], update["delta"]["w"])
    assert complete[0].payload["num_samples"] == 7
    assert b.assembler.pending == 1  # kept until the handler's transaction drops it
    with store_a.transaction() as tx:
        drop_assembly(tx, handled_id(complete[0].envelope))
    assert a.assembler.pending == 0
    assert store_a.read("chunk/" + handled_id(complete[0].envelope).hex() + "/00000") is None


def test_when_two_replicas_commit_the_last_chunks_at_once__one_sees_the_update_complete(replicas):
    sender, open_replica = replicas
    (_, a), (_, b) = open_replica(), open_replica()
    bodies = sender.seal("update.raw", _update(1), datasite_id="f1", round_num=1)
    for body in bodies[:-2]:
        assert a.open(body) is None
    results: list = [None, None]
    start = threading.Barrier(2)

    def run(i: int, sealer: Sealer) -> None:
        start.wait()
        results[i] = sealer.open(bodies[-2 + i])

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r is not None for r in results) == 1


def test_when_a_replica_dies_after_the_last_chunk__its_redelivery_completes_the_update_once(
    replicas,
):
    sender, open_replica = replicas
    (store_a, a), (_, b) = open_replica(), open_replica()
    bodies, _ = _completed_on(a, sender, 2)  # ... and replica a is killed before handling it
    again = b.open(bodies[-1])  # the broker redelivers the unacked last chunk to b
    assert again is not None
    uid = handled_id(again.envelope)
    with store_a.transaction() as tx:  # b handles it: effect, inbox and chunk drop together
        _mark_handled(tx, uid)
    _, c = open_replica()  # a replica that never saw it (its own replay memory)
    assert c.open(bodies[-1]) is None  # a later copy adds nothing: the update was handled
    assert c.assembler.pending == 0


def test_when_a_chunk_claims_another_size_for_a_started_update__it_is_refused_as_foreign(replicas):
    sender, open_replica = replicas
    (_, a), (_, b) = open_replica(), open_replica()
    bodies = sender.seal("update.raw", _update(3), datasite_id="f1", round_num=1)
    a.open(bodies[0])
    other = sender.seal("update.raw", _update(4), datasite_id="f1", round_num=1)
    env = decode_envelope(other[1])
    foreign_uid = env.chunk["update_id"]
    # a second update from the same sender is its own assembly, not foreign
    assert b.open(other[1]) is None
    assert foreign_uid != decode_envelope(bodies[0]).chunk["update_id"]
    with pytest.raises(ChunkError):
        b.assembler.commit(dict(decode_envelope(bodies[1]).chunk), b"x", b"y")  # never reserved


class _Recorder:
    """The publishing side of an endpoint: what was published, in order."""

    def __init__(self) -> None:
        self.published: list[int] = []

    async def publish(self, msg_type, payload, *, datasite_id="", round_num=0) -> int:
        await asyncio.sleep(0.002)  # the broker's confirm: the other replica flushes meanwhile
        self.published.append(int(payload["n"]))
        return 1


def test_when_two_replicas_flush_one_outbox_at_once__every_row_is_published_exactly_once(replicas):
    _, open_replica = replicas
    (store_a, _), (store_b, _) = open_replica(), open_replica()
    with store_a.transaction() as tx:
        for n in range(60):
            tx.emit("round.close", {"n": n})
    a, b = _Recorder(), _Recorder()
    service = Service(name="security", queue="q")
    runners = [ServiceRunner(service, a, store_a), ServiceRunner(service, b, store_b)]

    async def both() -> list[int]:
        return list(await asyncio.gather(*(r.flush_outbox() for r in runners)))

    counts = asyncio.run(both())
    assert sorted(a.published + b.published) == list(range(60))
    assert all(c > 0 for c in counts), counts  # both replicas took part
    assert store_a.pending_outbox_heads() == []


def test_when_another_replica_received_the_campaign_start__its_update_limit_still_applies(replicas):
    from federation.bus.middleware import SecureEndpoint
    from federation.campaign import CampaignConfig
    from federation.errors import OversizeMessage
    from federation.runtime.launch import _relearn_campaigns

    sender, open_replica = replicas
    (store_a, _), (store_b, b) = open_replica(), open_replica()
    endpoint = SecureEndpoint(None, b, None, "security")
    b.assembler.refresh_limits = lambda: _relearn_campaigns(endpoint, store_b)
    b.assembler.refresh_s = 0.0
    first = sender.seal("update.raw", _update(5, floats=1024 * 1024), datasite_id="f1", round_num=1)
    assert b.open(first[0]) is None  # no campaign known yet: the default limit
    small = CampaignConfig.model_validate(
        {
            "campaign_id": "c1",
            "datasites": ["f1", "f2"],
            "training": {"model_type": "cnn", "n_features": 2, "window": 5},
        }
    )
    with store_a.transaction() as tx:  # replica a handled campaign.start
        tx.put("campaign/c1", small.to_payload())
    big = _update(6, floats=1024 * 1024)  # 4 MB: over the tiny model's 1.1 MB limit
    with pytest.raises(OversizeMessage):  # b learns the tiny model's limit from the store
        b.open(sender.seal("update.raw", big, datasite_id="f1", round_num=1)[0])


def _completed_on(replica, sender, seed: int) -> tuple[list[bytes], bytes]:
    """Seal an update and open every chunk on ``replica``: (the chunk bodies, its update id)."""
    bodies = sender.seal("update.raw", _update(seed), datasite_id="f1", round_num=1)
    for body in bodies[:-1]:
        replica.open(body)
    complete = replica.open(bodies[-1])
    assert complete is not None
    return bodies, handled_id(complete.envelope)


def _mark_handled(tx, uid: bytes) -> None:
    """What a handler's transaction does for the update: inbox row and chunk drop together."""
    tx.mark_handled(uid, "update.raw")
    drop_assembly(tx, uid)


def _racing(store, prefix: str, race) -> None:
    """Make ``store``'s next listing of ``prefix`` run ``race`` (another replica's committed
    transaction) right after the listing, as PostgreSQL's READ COMMITTED lets happen."""
    base = store.transaction_class
    armed = [True]

    class Racing(base):  # type: ignore[misc, valid-type]
        def keys(self, wanted: str) -> list[str]:
            listed = super().keys(wanted)
            if wanted == prefix and armed[0]:
                armed[0] = False
                worker = threading.Thread(target=race)
                worker.start()
                worker.join()
            return listed

    store.transaction_class = Racing


def test_when_another_replica_handles_an_update_while_a_first_chunk_is_stored__the_chunk_is_kept(
    replicas,
):
    """The first chunk of a new update lists every open update (expiry, per-sender limits)
    while another replica's handler drops one of them: the listing is stale, the chunk valid."""
    from federation.runtime.shared_chunks import ASSEMBLY_PREFIX

    sender, open_replica = replicas
    (store_a, a), (store_b, b) = open_replica(), open_replica()
    _, uid = _completed_on(a, sender, 3)

    def handle_elsewhere() -> None:  # replica a's handler commits the update's effect
        with store_a.transaction() as tx:
            _mark_handled(tx, uid)

    _racing(store_b, ASSEMBLY_PREFIX, handle_elsewhere)
    other = sender.seal("update.raw", _update(4), datasite_id="f2", round_num=1)
    assert b.open(other[0]) is None  # stored, not refused
    for body in other[1:-1]:
        assert b.open(body) is None
    last = b.open(other[-1])
    assert last is not None and torch.equal(last.payload["delta"]["w"], _update(4)["delta"]["w"])


def test_when_a_replica_handles_an_update_while_another_completes_a_redelivered_copy__it_is_handled_once(
    replicas,
):
    """A redelivered last chunk assembles the update while the first replica's handler commits
    and drops its chunks: the copy finds the update handled (not a half-read, malformed one)."""
    from federation.runtime.shared_chunks import CHUNK_PREFIX

    sender, open_replica = replicas
    (store_a, a), (store_b, b) = open_replica(), open_replica()
    bodies, uid = _completed_on(a, sender, 5)
    handler_started = threading.Event()
    commit_now = threading.Event()

    def handler() -> None:  # replica a's handler: holds its transaction until told to commit
        with store_a.transaction() as tx:
            _mark_handled(tx, uid)
            handler_started.set()
            commit_now.wait(10)

    worker = threading.Thread(target=handler)
    worker.start()
    handler_started.wait(10)

    def commit_handler() -> None:
        commit_now.set()
        worker.join()

    # b lists the chunks, then a commits; if b waits for a's commit instead, a commits anyway.
    _racing(store_b, f"{CHUNK_PREFIX}{uid.hex()}/", commit_handler)
    threading.Timer(1.0, commit_now.set).start()
    try:
        again = b.open(bodies[-1])  # the broker redelivers the last chunk to replica b
    finally:
        commit_now.set()
        worker.join()
    assert again is None  # the update was handled by a: nothing to hand to b's handler
