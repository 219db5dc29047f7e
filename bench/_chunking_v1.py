"""The chunk assembler as it was before per-sender budgets: the "before" of bench_hostile only.

Kept (reassembly logic verbatim) so the benchmark shows side by side what one hostile claim
did to it: it booked the whole claimed size on the first chunk, shared one slot table among
all senders, and expired incomplete updates only when the next chunk arrived. Production
code never imports this module.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from federation.errors import ChunkError, OversizeMessage, ReplayError
from federation.wire.chunking import chunk_bounds, chunks_digest
from federation.wire.envelope import validate_chunk

__all__ = ["ChunkAssemblerV1"]

_FREE, _WRITING, _DONE = 0, 1, 2
_MEMORY = 1024


@dataclass
class _Assembly:
    origin: Hashable
    size: int
    total: int
    sha256_all: str
    created: float
    buffer: np.ndarray
    state: bytearray
    msg_ids: list[bytes | None] = field(default_factory=list)
    digests: list[bytes | None] = field(default_factory=list)
    received: int = 0


def _check_chunk(chunk: Mapping[str, Any]) -> dict[str, Any]:
    checked = validate_chunk(chunk)
    assert checked is not None
    return checked


class ChunkAssemblerV1:
    """Reassembles chunked payloads: any order, bounded memory, timeout, typed errors.

    Thread-safe. ``reserve`` hands out the slot a chunk's plaintext must be written to (so a
    sealer can decrypt straight into it), ``commit`` records it once verified and returns the
    whole payload buffer when the last chunk arrives; ``release`` gives a slot back after a
    failed verification. ``add`` does all three for plaintext already in hand.
    """

    def __init__(
        self,
        *,
        max_inflight_bytes: int = 2 * 1024**3,
        max_updates: int = 16,
        timeout_s: float = 300.0,
        max_chunk_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_inflight_bytes = max_inflight_bytes
        self.max_updates = max_updates
        self.timeout_s = timeout_s
        self.max_chunk_bytes = max_chunk_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[bytes, _Assembly] = {}
        self._done: OrderedDict[bytes, frozenset[bytes]] = OrderedDict()
        self._expired: OrderedDict[bytes, str] = OrderedDict()
        self.inflight_bytes = 0

    @property
    def pending(self) -> int:
        """Updates waiting for more chunks."""
        return len(self._open)

    def expire(self, now: float | None = None) -> list[ChunkError]:
        """Drop updates older than the timeout; one ChunkError per dropped update."""
        with self._lock:
            return self._expire_locked(self._clock() if now is None else now)

    def _expire_locked(self, now: float) -> list[ChunkError]:
        errors = []
        for uid, a in list(self._open.items()):
            if now - a.created <= self.timeout_s:
                continue
            missing = [i for i in range(a.total) if a.state[i] != _DONE]
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            text = (
                f"chunked update {uid.hex()} from {a.origin!r} timed out after {self.timeout_s}s:"
                f" missing {len(missing)} of {a.total} chunks [{shown}]"
            )
            self._drop(uid)
            self._remember(self._expired, uid, text)
            errors.append(ChunkError(text))
        return errors

    def _drop(self, uid: bytes) -> None:
        a = self._open.pop(uid)
        self.inflight_bytes -= a.size

    @staticmethod
    def _remember(book: OrderedDict[bytes, Any], uid: bytes, value: Any) -> None:
        book[uid] = value
        while len(book) > _MEMORY:
            book.popitem(last=False)

    def reserve(
        self, origin: Hashable, chunk: Mapping[str, Any], msg_id: bytes = b""
    ) -> memoryview:
        """The writable slot for this chunk's plaintext; raises ChunkError/ReplayError/Oversize."""
        c = _check_chunk(chunk)
        uid, index, total, size = c["update_id"], c["index"], c["total"], c["size"]
        with self._lock:
            self._expire_locked(self._clock())
            if uid in self._done:
                if msg_id and msg_id in self._done[uid]:
                    raise ReplayError(f"chunk {index} of update {uid.hex()} was already accepted")
                raise ChunkError(f"duplicate chunk {index}: update {uid.hex()} is already complete")
            if uid in self._expired:
                raise ChunkError(self._expired[uid])
            a = self._open.get(uid)
            if a is None:
                a = self._start(uid, origin, c)
            elif (a.origin, a.total, a.size, a.sha256_all) != (
                origin,
                total,
                size,
                c["sha256_all"],
            ):
                raise ChunkError(
                    f"foreign chunk for update {uid.hex()}: sender, total, size or sha256_all"
                    " differ from its first chunk"
                )
            if a.state[index] == _DONE:
                if msg_id and a.msg_ids[index] == msg_id:
                    raise ReplayError(f"chunk {index} of update {uid.hex()} was already accepted")
                raise ChunkError(f"duplicate chunk {index} of update {uid.hex()}")
            if a.state[index] == _WRITING:
                raise ChunkError(f"duplicate chunk {index} of update {uid.hex()} (in progress)")
            a.state[index] = _WRITING
            start, end = chunk_bounds(size, total, index)
            return memoryview(a.buffer)[start:end]

    def _start(self, uid: bytes, origin: Hashable, c: dict[str, Any]) -> _Assembly:
        size, total = c["size"], c["total"]
        if size > self.max_inflight_bytes:
            raise OversizeMessage(
                f"chunked update of {size} bytes exceeds the {self.max_inflight_bytes}-byte limit"
            )
        if self.max_chunk_bytes is not None and -(-size // total) > self.max_chunk_bytes:
            raise ChunkError(f"{total} chunks cannot carry {size} bytes within the chunk limit")
        if len(self._open) >= self.max_updates:
            raise ChunkError(
                f"too many chunked updates in flight ({self.max_updates}); try again later"
            )
        if self.inflight_bytes + size > self.max_inflight_bytes:
            raise OversizeMessage(
                f"chunk reassembly memory is full ({self.inflight_bytes} of"
                f" {self.max_inflight_bytes} bytes in flight)"
            )
        a = _Assembly(
            origin=origin,
            size=size,
            total=total,
            sha256_all=c["sha256_all"],
            created=self._clock(),
            # Uninitialised: pages are committed only as chunks are written.
            buffer=np.empty(size, dtype=np.uint8),
            state=bytearray(total),
            msg_ids=[None] * total,
            digests=[None] * total,
        )
        self._open[uid] = a
        self.inflight_bytes += size
        return a

    def release(self, chunk: Mapping[str, Any]) -> None:
        """Give back a reserved slot whose chunk failed verification."""
        with self._lock:
            a = self._open.get(bytes(chunk["update_id"]))
            index = chunk["index"]
            if a is not None and a.state[index] == _WRITING:
                a.state[index] = _FREE

    def commit(self, chunk: Mapping[str, Any], msg_id: bytes, digest: bytes) -> np.ndarray | None:
        """Record a verified chunk; the whole payload buffer once every chunk is in."""
        uid, index = bytes(chunk["update_id"]), chunk["index"]
        with self._lock:
            a = self._open.get(uid)
            if a is None or a.state[index] != _WRITING:
                raise ChunkError(
                    f"chunk {index} of update {uid.hex()} was not reserved (timed out?)"
                )
            a.state[index] = _DONE
            a.msg_ids[index] = msg_id
            a.digests[index] = digest
            a.received += 1
            if a.received < a.total:
                return None
            self._drop(uid)
            self._remember(self._done, uid, frozenset(m for m in a.msg_ids if m))
            if chunks_digest(a.size, a.total, a.digests) != a.sha256_all:  # type: ignore[arg-type]
                raise ChunkError(f"update {uid.hex()}: chunks do not match sha256_all")
            return a.buffer

    def add(
        self,
        origin: Hashable,
        chunk: Mapping[str, Any],
        data: bytes | bytearray | memoryview,
        msg_id: bytes = b"",
    ) -> np.ndarray | None:
        """Copy one chunk's plaintext in; the whole payload buffer when complete."""
        slot = self.reserve(origin, chunk, msg_id)
        try:
            src = memoryview(data).cast("B")
            if len(src) != len(slot):
                raise ChunkError(
                    f"chunk {chunk['index']} is {len(src)} bytes, its place needs {len(slot)}"
                )
            slot[:] = src
        except BaseException:
            self.release(chunk)
            raise
        return self.commit(chunk, msg_id, hashlib.sha256(src).digest())
