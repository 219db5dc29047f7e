"""Sealing body by body (Sealer.prepare), bodies written in place, parallel chunk digests."""

from __future__ import annotations

import hashlib

import pytest
import torch
from federation.crypto import _buffers
from federation.crypto import sealer as sealer_mod
from federation.errors import OversizeMessage
from federation.wire.chunking import chunk_bounds


def _payload(n: int) -> dict:
    return {"delta": {"w": torch.arange(n, dtype=torch.float32)}, "round_num": 1}


def test_when_prepared__bodies_come_one_at_a_time_and_open_like_sealed_ones(make_sealer):
    out, inn = make_sealer(max_message_bytes=16 * 1024), make_sealer(max_message_bytes=16 * 1024)
    sealing = out.prepare("update.raw", _payload(20_000), datasite_id="f1", round_num=1)
    assert sealing.count == len(out.seal("update.raw", _payload(20_000))) > 1
    opened = []
    while (body := sealing.next_body()) is not None:
        assert type(body) is bytes and len(body) <= 16 * 1024
        opened.append(inn.open(body, expected_msg_type="update.raw"))
    assert len(opened) == sealing.count
    assert all(o is None for o in opened[:-1])
    assert torch.equal(opened[-1].payload["delta"]["w"], torch.arange(20_000, dtype=torch.float32))
    assert sealing.next_body() is None


def test_when_a_payload_needs_too_many_chunks__prepare_refuses_before_sealing_anything(
    make_sealer, monkeypatch
):
    monkeypatch.setattr(sealer_mod, "MAX_CHUNKS", 2)
    with pytest.raises(OversizeMessage):
        make_sealer(max_message_bytes=8 * 1024).prepare("update.raw", _payload(20_000))


@pytest.mark.parametrize("in_place", [True, False])
def test_when_bodies_are_written_in_place_or_copied__both_are_bytes_that_open(
    make_sealer, monkeypatch, in_place
):
    if in_place and not _buffers.IN_PLACE:
        pytest.skip("in-place bytes need CPython")
    monkeypatch.setattr(_buffers, "IN_PLACE", in_place)
    out, inn = make_sealer(), make_sealer()
    bodies = [out.seal("update.raw", _payload(1000))[0] for _ in range(3)]
    assert all(type(b) is bytes for b in bodies)
    assert len(set(bodies)) == 3  # fresh object and fresh nonce each time; hashable like bytes
    for body in bodies:
        got = inn.open(body)
        assert torch.equal(got.payload["delta"]["w"], torch.arange(1000, dtype=torch.float32))


def test_when_new_bytes_is_filled__the_bytes_object_holds_exactly_what_was_written():
    for in_place in (True, False):
        handle, view = _buffers.new_bytes(5, in_place=in_place)
        view[:] = b"hello"
        assert _buffers.finish(handle) == b"hello"
    with pytest.raises(ValueError):
        _buffers.new_bytes(0)


def test_when_chunk_digests_run_on_two_threads__they_equal_serial_sha256(monkeypatch):
    monkeypatch.setattr(sealer_mod, "PARALLEL_DIGEST_BYTES", 1)
    monkeypatch.setattr(sealer_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sealer_mod, "_digest_pool", None)
    data = bytes(range(256)) * 4096
    parts = [data[:1000], memoryview(data)[1000:]]
    total = 7
    slices = [sealer_mod._slice(parts, *chunk_bounds(len(data), total, i)) for i in range(total)]
    expected = [
        hashlib.sha256(data[slice(*chunk_bounds(len(data), total, i))]).digest()
        for i in range(total)
    ]
    assert sealer_mod._chunk_digests(slices, len(data)) == expected
    assert sealer_mod._digest_pool is not None  # the parallel path was taken


def test_when_a_large_body_is_allocated__its_aligned_interior_is_advised_for_huge_pages(
    monkeypatch,
):
    import ctypes
    import mmap
    import os.path
    import sys

    region = mmap.mmap(-1, 8 * 1024 * 1024)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
    thp = sys.platform.startswith("linux") and os.path.exists("/sys/kernel/mm/transparent_hugepage")
    try:
        assert _buffers.advise_hugepages(addr, len(region)) is thp
        assert _buffers.advise_hugepages(addr, 4096) is False  # no whole 2 MiB page inside
    finally:
        del addr
        region.close()
    seen: list[int] = []
    real = _buffers.advise_hugepages
    monkeypatch.setattr(_buffers, "advise_hugepages", lambda a, n: seen.append(n) or real(a, n))
    for n in (_buffers.HUGEPAGE_BYTES - 1, _buffers.HUGEPAGE_BYTES + 5):
        handle, view = _buffers.new_bytes(n)
        view[:] = b"\x5a" * n
        view.release()
        out = _buffers.finish(handle)
        assert len(out) == n and out[:1] == out[-1:] == b"\x5a"
    if _buffers.IN_PLACE:
        assert seen == [_buffers.HUGEPAGE_BYTES + 5]


def test_when_the_digest_helper_is_busy__the_caller_hashes_queued_chunks_itself(monkeypatch):
    import threading
    import time

    monkeypatch.setattr(sealer_mod, "PARALLEL_DIGEST_BYTES", 1)
    monkeypatch.setattr(sealer_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sealer_mod, "_digest_pool", None)
    data = bytes(range(256)) * 1024
    slices = [[memoryview(data)[i * 65536 : (i + 1) * 65536]] for i in range(4)]
    sealer_mod._chunk_digests(slices, len(data))  # creates the helper
    release = threading.Event()
    blocker = sealer_mod._digest_pool.submit(release.wait, 30)
    try:
        start = time.monotonic()
        got = sealer_mod._chunk_digests(slices, len(data))  # would wait for the blocker
        assert time.monotonic() - start < 5
    finally:
        release.set()
        blocker.result()
    assert got == [hashlib.sha256(data[i * 65536 : (i + 1) * 65536]).digest() for i in range(4)]
