"""Split large payloads into chunks and reassemble them in any order with bounded memory.

A payload of ``size`` bytes split into ``total`` chunks: chunk ``i`` covers bytes
``[i*size//total, (i+1)*size//total)``, so every chunk's place follows from
``(size, total, index)`` and the receiver can write each one straight into a preallocated
buffer. ``sha256_all`` is the SHA-256 of the chunk list (size, total and each chunk's SHA-256),
which binds order and completeness without another pass over the data.
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
from federation.wire.envelope import validate_header

__all__ = [
    "chunk_count",
    "chunk_bounds",
    "split",
    "chunks_digest",
    "ChunkAssembler",
]

_FREE, _WRITING, _DONE = 0, 1, 2
_MEMORY = 1024


def chunk_count(size: int, max_bytes: int) -> int:
    """How many chunks a payload of ``size`` bytes needs with at most ``max_bytes`` each."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    return max(1, -(-size // max_bytes))


def chunk_bounds(size: int, total: int, index: int) -> tuple[int, int]:
    """The [start, end) byte range of chunk ``index``."""
    return index * size // total, (index + 1) * size // total


def split(plaintext: bytes | bytearray | memoryview, max_bytes: int) -> list[bytes]:
    """Split bytes into the chunks the receiver expects (copies; see chunk_bounds for views)."""
    mv = memoryview(plaintext).cast("B")
    total = chunk_count(len(mv), max_bytes)
    return [bytes(mv[slice(*chunk_bounds(len(mv), total, i))]) for i in range(total)]


def chunks_digest(size: int, total: int, digests: list[bytes]) -> str:
    """``sha256_all``: SHA-256 hex over (size, total, each chunk's raw SHA-256 in order)."""
    h = hashlib.sha256(b"pdmfed-chunks-v1\x00")
    h.update(size.to_bytes(8, "big"))
    h.update(total.to_bytes(4, "big"))
    for d in digests:
        h.update(d)
    return h.hexdigest()


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
    # Reuse the envelope's validation of the chunk map (same rules, same errors).
    header = validate_header(
        {
            "security_version": "1.0",
            "communication_type": "secure",
            "msg_type": "update.raw",
            "msg_id": bytes(16),
            "sender": "-",
            "key_id": "-",
            "timestamp": 0.0,
            "datasite_id": "",
            "round_num": 0,
            "nonce": bytes(12),
            "checksum": "0" * 64,
            "chunk": chunk,
        }
    )
    return header["chunk"]


class ChunkAssembler:
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
        """Give back a reserved slot whose chunk failed verification.

        An update none of whose chunks was accepted is dropped with it: a refused chunk (a
        replay, a forgery) never leaves a reassembly booked behind.
        """
        with self._lock:
            uid = bytes(chunk["update_id"])
            a = self._open.get(uid)
            index = chunk["index"]
            if a is not None and a.state[index] == _WRITING:
                a.state[index] = _FREE
                if a.received == 0 and _WRITING not in a.state:
                    self._drop(uid)

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
