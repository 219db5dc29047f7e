"""Chunk reassembly through the service's store, so the replicas of a service complete updates
together.

Replicas consume one queue: the chunks of one update reach whichever replica is free. Each
verified chunk (decrypted, checksum and signature checked by the replica that received it) is
committed to the shared store before its delivery is acked; the commit that finds every chunk
present returns the whole payload. The chunk rows are removed in the same transaction as the
handler's effect (``drop_assembly``), so a replica killed after acking a chunk, or after the
last chunk but before handling, loses nothing: the redelivered chunk finds its update complete
and any replica handles it, once (the inbox holds the update id, see
:func:`~federation.runtime.service.handled_id`).

Same interface and refusals as :class:`~federation.wire.chunking.ChunkAssembler` (size claims
bounded by the campaign's model, foreign and duplicate chunks refused, a sender's open updates
bounded, incomplete updates expire), with the bookkeeping in the store instead of memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

from federation.errors import BusError, ChunkError, OversizeMessage, PdmFedError
from federation.wire.chunking import (
    DEFAULT_MAX_UPDATE_BYTES,
    RefusalHook,
    UpdateLimits,
    _check_chunk,
    chunk_bounds,
    chunks_digest,
)

__all__ = ["SharedChunkAssembler", "drop_assembly", "CHUNK_PREFIX", "ASSEMBLY_PREFIX"]

log = logging.getLogger(__name__)

#: ``chunk/<update id hex>/<index>``: one verified chunk (its plaintext, digest, message id).
CHUNK_PREFIX = "chunk/"
#: ``assembly/<update id hex>``: what the first chunk claimed (origin, sender, size, total).
ASSEMBLY_PREFIX = "assembly/"


def _assembly_key(uid: bytes) -> str:
    return f"{ASSEMBLY_PREFIX}{uid.hex()}"


def _chunk_key(uid: bytes, index: int) -> str:
    return f"{CHUNK_PREFIX}{uid.hex()}/{index:05d}"


def _lock_name(uid: bytes) -> str:
    return f"chunks/{uid.hex()}"


def drop_assembly(tx: Any, update_id: bytes) -> None:
    """Remove an update's chunks inside ``tx`` (the transaction that handles the update).

    Holds the update's lock first: a replica assembling a redelivered copy of the update
    waits for this commit and then finds the update handled, instead of chunks vanishing
    under its reads.
    """
    tx.lock(_lock_name(update_id))
    _drop_rows(tx, update_id)


def _drop_rows(tx: Any, update_id: bytes) -> None:
    for key in tx.keys(f"{CHUNK_PREFIX}{update_id.hex()}/"):
        tx.delete(key)
    tx.delete(_assembly_key(update_id))


def _origin(origin: Hashable) -> list:
    return [str(part) for part in origin] if isinstance(origin, tuple) else [str(origin)]


class SharedChunkAssembler(UpdateLimits):
    """Reassembles chunked payloads in a :class:`~federation.runtime.store.ServiceStore`.

    ``reserve`` hands out a slot for one chunk's plaintext (this process's memory, one chunk),
    ``commit`` stores the verified chunk and returns the whole payload when the update is
    complete, ``release`` forgets a slot whose chunk failed verification. Each commit holds the
    update's lock, so two replicas committing its last two chunks at once cannot both miss
    completion.
    """

    def __init__(
        self,
        store: Any,
        *,
        max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES,
        updates_per_sender: int = 4,
        timeout_s: float = 300.0,
        max_chunk_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_update_bytes < 1 or updates_per_sender < 1:
            raise ValueError("reassembly limits must be positive")
        self.store = store
        self.default_max_update_bytes = max_update_bytes
        self.updates_per_sender = updates_per_sender
        self.timeout_s = timeout_s
        self.max_chunk_bytes = max_chunk_bytes
        self.on_refused: RefusalHook | None = None
        self.refusals: Counter[str] = Counter()
        self._clock = clock
        self._lock = threading.Lock()
        self._limits: OrderedDict[str, int] = OrderedDict()
        self._slots: dict[tuple[bytes, int], tuple[np.ndarray, str, Hashable, dict]] = {}
        #: Called at most every ``refresh_s`` before a chunk is reserved: learns the limits of
        #: campaigns another replica received the start of (``start_node`` sets it).
        self.refresh_limits: Callable[[], None] | None = None
        self.refresh_s = 5.0
        self._refreshed = float("-inf")

    @property
    def pending(self) -> int:
        """Updates waiting for more chunks (across every replica)."""
        return len(
            self.store._query(
                "SELECT key FROM kv WHERE key >= ? AND key < ?",
                (ASSEMBLY_PREFIX, ASSEMBLY_PREFIX + "\U0010ffff"),
            )
        )

    def close(self) -> None:
        """Nothing runs in the background: expiry happens as chunks are committed."""

    def _report(self, sender: str, err: PdmFedError) -> None:
        self.refusals[sender] += 1
        hook = self.on_refused
        if hook is not None:
            try:
                hook(sender, err)
            except Exception:  # a metrics hook must never break reassembly
                log.exception("chunk refusal hook failed")

    # -- the chunk path ---------------------------------------------------------------------
    def reserve(
        self,
        origin: Hashable,
        chunk: Mapping[str, Any],
        msg_id: bytes = b"",
        *,
        sender: str | None = None,
    ) -> memoryview:
        """A writable slot for this chunk's plaintext; ChunkError/OversizeMessage on a bad claim."""
        who = str(origin if sender is None else sender)
        self._maybe_refresh()
        try:
            c = _check_chunk(chunk)
            uid, index, total, size = bytes(c["update_id"]), c["index"], c["total"], c["size"]
            if size > self.max_update_bytes:
                raise OversizeMessage(
                    f"chunked update of {size} bytes exceeds the largest update allowed"
                    f" ({self.max_update_bytes} bytes, from the campaign's model)"
                )
            if self.max_chunk_bytes is not None and -(-size // total) > self.max_chunk_bytes:
                raise ChunkError(f"{total} chunks cannot carry {size} bytes within the chunk limit")
            start, end = chunk_bounds(size, total, index)
            with self._lock:
                if (uid, index) in self._slots:
                    raise ChunkError(f"duplicate chunk {index} of update {uid.hex()} (in progress)")
                slot = np.empty(end - start, dtype=np.uint8)
                self._slots[(uid, index)] = (slot, who, origin, c)
        except PdmFedError as err:
            self._report(who, err)
            raise
        return memoryview(slot)

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if self.refresh_limits is None or now - self._refreshed < self.refresh_s:
            return
        self._refreshed = now
        try:
            self.refresh_limits()
        except Exception:  # the limits learned so far stay; the next chunk tries again
            log.exception("learning campaign update limits from the store failed")

    def release(self, chunk: Mapping[str, Any]) -> None:
        """Forget the slot of a chunk that failed verification."""
        with self._lock:
            self._slots.pop((bytes(chunk["update_id"]), chunk["index"]), None)

    def commit(self, chunk: Mapping[str, Any], msg_id: bytes, digest: bytes) -> np.ndarray | None:
        """Store a verified chunk; the whole payload buffer once every chunk is in the store."""
        uid, index = bytes(chunk["update_id"]), chunk["index"]
        with self._lock:
            held = self._slots.pop((uid, index), None)
        if held is None:
            raise ChunkError(f"chunk {index} of update {uid.hex()} was not reserved")
        slot, sender, origin, c = held
        refused: list[tuple[str, PdmFedError]] = []
        try:
            return self._store_chunk(uid, index, slot, sender, origin, c, msg_id, digest, refused)
        except PdmFedError as err:
            refused.append((sender, err))
            raise
        except Exception as exc:  # the shared store failed, not the verified chunk: redeliver
            raise BusError(f"chunk store: {type(exc).__name__}: {exc}") from exc
        finally:
            for who, err in refused:
                self._report(who, err)

    def _store_chunk(
        self,
        uid: bytes,
        index: int,
        slot: np.ndarray,
        sender: str,
        origin: Hashable,
        c: dict,
        msg_id: bytes,
        digest: bytes,
        refused: list[tuple[str, PdmFedError]],
    ) -> np.ndarray | None:
        now = self._clock()
        claim = {
            "origin": _origin(origin),
            "sender": sender,
            "size": int(c["size"]),
            "total": int(c["total"]),
            "sha256_all": str(c["sha256_all"]),
        }
        dropped: ChunkError | None = None  # raised once the drop is committed
        with self.store.transaction() as tx:
            tx.lock(_lock_name(uid))
            if tx.seen(uid):  # a copy of a chunk of an update already handled: nothing to add
                return None
            meta = tx.get(_assembly_key(uid))
            if meta is None:
                self._make_room(tx, sender, now, refused)
                tx.put(_assembly_key(uid), {**claim, "created": now})
            elif {k: meta[k] for k in claim} != claim:
                raise ChunkError(
                    f"foreign chunk for update {uid.hex()}: sender, total, size or sha256_all"
                    " differ from its first chunk"
                )
            elif now - float(meta["created"]) > self.timeout_s:
                drop_assembly(tx, uid)
                dropped = ChunkError(
                    f"chunked update {uid.hex()} from {sender!r} timed out after {self.timeout_s}s",
                    reason="expired",
                )
            if dropped is None:
                key = _chunk_key(uid, index)
                stored = tx.get(key) if tx.has(key) else None
                if stored is None:
                    tx.put(key, {"msg_id": bytes(msg_id), "digest": bytes(digest), "data": slot})
                elif bytes(stored["msg_id"]) != bytes(msg_id):
                    raise ChunkError(f"duplicate chunk {index} of update {uid.hex()}")
                # else: the broker redelivered a chunk a replica stored before it could ack it
                if len(tx.keys(f"{CHUNK_PREFIX}{uid.hex()}/")) < claim["total"]:
                    return None
                buffer, dropped = self._assemble(tx, uid, claim)
        if dropped is not None:
            raise dropped
        return buffer

    def _assemble(self, tx: Any, uid: bytes, claim: dict) -> tuple[Any, ChunkError | None]:
        size, total = claim["size"], claim["total"]
        buffer = np.empty(size, dtype=np.uint8)
        digests = []
        for i in range(total):
            rec = tx.get(_chunk_key(uid, i))
            if rec is None:  # expired or evicted by another replica since the listing
                return None, ChunkError(
                    f"update {uid.hex()} was dropped while it was assembled", reason="expired"
                )
            start, end = chunk_bounds(size, total, i)
            data = rec["data"]
            buffer[start:end] = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
            digests.append(bytes(rec["digest"]))
        if chunks_digest(size, total, digests) != claim["sha256_all"]:
            drop_assembly(tx, uid)
            return None, ChunkError(f"update {uid.hex()}: chunks do not match sha256_all")
        return buffer, None

    def _make_room(
        self, tx: Any, sender: str, now: float, refused: list[tuple[str, PdmFedError]]
    ) -> None:
        """Expire old updates; evict the sender's oldest beyond its open-update limit."""
        mine = []
        for key in tx.keys(ASSEMBLY_PREFIX):
            meta = tx.get(key)
            if meta is None:  # handled by another replica since the listing (READ COMMITTED)
                continue
            uid = bytes.fromhex(key.removeprefix(ASSEMBLY_PREFIX))
            # Rows only, without the other update's lock (two replicas each holding their own
            # update's lock must not wait for each other's); _assemble tolerates the drop.
            if now - float(meta["created"]) > self.timeout_s:
                _drop_rows(tx, uid)
                refused.append(
                    (
                        meta["sender"],
                        ChunkError(
                            f"chunked update {uid.hex()} from {meta['sender']!r} timed out after"
                            f" {self.timeout_s}s",
                            reason="expired",
                        ),
                    )
                )
            elif meta["sender"] == sender:
                mine.append((float(meta["created"]), uid))
        mine.sort()
        while len(mine) >= self.updates_per_sender:
            _, oldest = mine.pop(0)
            _drop_rows(tx, oldest)
            refused.append(
                (
                    sender,
                    ChunkError(
                        f"chunked update {oldest.hex()} from {sender!r} evicted: the sender opened more"
                        f" than {self.updates_per_sender} updates at once",
                        reason="oversize",
                    ),
                )
            )
