"""Chunking: bounds, any-order reassembly, and typed errors for every way chunks go wrong."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from federation.errors import ChunkError, OversizeMessage, ReplayError
from federation.wire.chunking import (
    ChunkAssembler,
    chunk_bounds,
    chunk_count,
    chunks_digest,
    split,
)


def _chunks(data: bytes, max_bytes: int, uid: bytes | None = None):
    pieces = split(data, max_bytes)
    digest = chunks_digest(len(data), len(pieces), [hashlib.sha256(p).digest() for p in pieces])
    uid = uid or os.urandom(16)
    return [
        (
            {
                "update_id": uid,
                "index": i,
                "total": len(pieces),
                "size": len(data),
                "sha256_all": digest,
            },
            p,
        )
        for i, p in enumerate(pieces)
    ]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("size,max_bytes", [(1, 1), (10, 3), (20, 8), (1000, 7), (64, 64)])
def test_when_payload_is_split__chunks_are_bounded_and_cover_it_exactly(size, max_bytes):
    data = os.urandom(size)
    pieces = split(data, max_bytes)
    assert len(pieces) == chunk_count(size, max_bytes)
    assert all(1 <= len(p) <= max_bytes for p in pieces)
    assert b"".join(pieces) == data
    total = len(pieces)
    assert [chunk_bounds(size, total, i)[0] for i in range(total)] == [
        sum(len(p) for p in pieces[:i]) for i in range(total)
    ]


def test_when_chunks_arrive_in_any_order__the_payload_is_reassembled():
    data = os.urandom(1000)
    chunks = _chunks(data, 64)
    random.Random(3).shuffle(chunks)
    asm = ChunkAssembler()
    results = [asm.add("s", c, p, msg_id=os.urandom(16)) for c, p in chunks]
    assert all(r is None for r in results[:-1])
    assert bytes(results[-1]) == data
    assert asm.pending == 0 and asm.inflight_bytes == 0


def test_when_a_chunk_is_missing__timeout_gives_a_chunk_error_naming_it():
    clock = _Clock()
    asm = ChunkAssembler(timeout_s=10, clock=clock)
    chunks = _chunks(os.urandom(100), 30)
    for c, p in chunks[:2] + chunks[3:]:
        asm.add("s", c, p)
    clock.now = 11
    errors = asm.expire()
    assert len(errors) == 1 and "missing 1 of 4 chunks [2]" in str(errors[0])
    assert asm.pending == 0 and asm.inflight_bytes == 0
    with pytest.raises(ChunkError, match="timed out"):
        asm.add("s", *chunks[2])


def test_when_a_chunk_is_duplicated__chunk_error_or_replay_error():
    asm = ChunkAssembler()
    chunks = _chunks(os.urandom(100), 30)
    asm.add("s", *chunks[0], msg_id=b"m0")
    with pytest.raises(ChunkError, match="duplicate"):
        asm.add("s", *chunks[0], msg_id=b"other")
    with pytest.raises(ReplayError):
        asm.add("s", *chunks[0], msg_id=b"m0")
    for i, (c, p) in enumerate(chunks[1:], 1):
        asm.add("s", c, p, msg_id=f"m{i}".encode())
    with pytest.raises(ChunkError, match="already complete"):
        asm.add("s", *chunks[1], msg_id=b"new")
    with pytest.raises(ReplayError):
        asm.add("s", *chunks[1], msg_id=b"m1")


@pytest.mark.parametrize("field", ["origin", "total", "size", "sha256_all"])
def test_when_a_foreign_chunk_claims_the_same_update_id__chunk_error(field):
    data = os.urandom(100)
    uid = os.urandom(16)
    chunks = _chunks(data, 30, uid)
    asm = ChunkAssembler()
    asm.add("s", *chunks[0])
    chunk, piece = dict(chunks[1][0]), chunks[1][1]
    origin = "s"
    if field == "origin":
        origin = "mallory"
    elif field == "total":
        chunk["total"] = 5
    elif field == "size":
        chunk["size"] = 101
    else:
        chunk["sha256_all"] = "f" * 64
    with pytest.raises(ChunkError, match="foreign"):
        asm.add(origin, chunk, piece)
    assert asm.add("s", *chunks[1]) is None  # the genuine chunk still fits


def test_when_chunks_do_not_match_sha256_all__completion_raises_chunk_error():
    chunks = _chunks(os.urandom(60), 30)
    asm = ChunkAssembler()
    asm.add("s", *chunks[0])
    with pytest.raises(ChunkError, match="sha256_all"):
        asm.add("s", chunks[1][0], bytes(len(chunks[1][1])))


def test_when_chunk_has_wrong_length__chunk_error_and_slot_is_reusable():
    chunks = _chunks(os.urandom(60), 30)
    asm = ChunkAssembler()
    with pytest.raises(ChunkError, match="needs 30"):
        asm.add("s", chunks[0][0], b"short")
    asm.add("s", *chunks[0])
    assert bytes(asm.add("s", *chunks[1])) == chunks[0][1] + chunks[1][1]


def test_when_limits_are_reached__only_that_senders_updates_are_refused_or_evicted():
    asm = ChunkAssembler(max_update_bytes=150, updates_per_sender=2, sender_budget_bytes=100)
    refused: list[tuple[str, str]] = []
    asm.on_refused = lambda sender, err: refused.append((sender, err.reason))
    a, b, c = (_chunks(os.urandom(n), 30) for n in (100, 60, 40))
    asm.add("s", *a[0])
    asm.add("s", *a[1])
    assert asm.inflight_bytes == 50  # bytes that arrived, not the 100 claimed
    with pytest.raises(OversizeMessage, match="largest update"):
        asm.add("s", *_chunks(os.urandom(151), 100)[0])
    asm.add("s", *b[0])
    asm.add("s", *c[0])  # a third update: the sender's oldest (a) is evicted
    assert asm.pending_by_sender() == {"s": 2} and asm.committed_by_sender() == {"s": 50}
    with pytest.raises(ChunkError, match="evicted"):
        asm.add("s", *a[2])
    asm.add("t", *_chunks(os.urandom(100), 30)[0])  # another sender is untouched by s's limits
    assert asm.pending_by_sender() == {"s": 2, "t": 1}
    assert asm.refusals == {"s": 3}
    assert refused == [("s", "oversize"), ("s", "oversize"), ("s", "malformed")]


def test_when_a_campaign_sets_a_limit__the_largest_limit_set_applies():
    asm = ChunkAssembler(max_update_bytes=10_000)
    asm.limit_update_bytes("c1", 100)
    asm.limit_update_bytes("c2", 300)
    assert asm.max_update_bytes == 300
    asm.limit_update_bytes("c2", None)
    assert asm.max_update_bytes == 100
    with pytest.raises(OversizeMessage):
        asm.add("s", *_chunks(os.urandom(101), 60)[0])
    asm.limit_update_bytes("c1", None)
    assert asm.max_update_bytes == 10_000


def test_when_chunks_would_exceed_the_chunk_limit__chunk_error():
    asm = ChunkAssembler(max_chunk_bytes=10)
    with pytest.raises(ChunkError, match="chunk limit"):
        asm.add("s", *_chunks(os.urandom(100), 50)[0])


def test_when_the_address_space_for_a_claim_cannot_be_had__the_chunk_is_refused_typed(monkeypatch):
    """Under strict overcommit a large claim's buffer raises MemoryError: refuse, do not crash."""
    import federation.wire.chunking as chunking

    asm = ChunkAssembler()
    real_empty = chunking.np.empty

    def no_memory(size, *a, **kw):
        if size > 1024:
            raise MemoryError
        return real_empty(size, *a, **kw)

    monkeypatch.setattr(chunking.np, "empty", no_memory)
    with pytest.raises(OversizeMessage, match="cannot reserve"):
        asm.add("s", *_chunks(os.urandom(4096), 1024)[0])
    assert asm.pending == 0 and asm.refusals == {"s": 1}
    assert asm.add("s", *_chunks(os.urandom(8), 4)[0]) is None and asm.pending == 1  # small: fine
