"""Split large payloads into chunks and reassemble them in any order with bounded memory.

A payload of ``size`` bytes split into ``total`` chunks: chunk ``i`` covers bytes
``[i*size//total, (i+1)*size//total)``, so every chunk's place follows from
``(size, total, index)`` and the receiver can write each one straight into a preallocated
buffer. ``sha256_all`` is the SHA-256 of the chunk list (size, total and each chunk's SHA-256),
which binds order and completeness without another pass over the data.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from federation.errors import ChunkError, OversizeMessage, PdmFedError, ReplayError
from federation.wire.envelope import validate_chunk

__all__ = [
    "UpdateLimits",
    "chunk_count",
    "chunk_bounds",
    "split",
    "chunks_digest",
    "ChunkAssembler",
    "DEFAULT_MAX_UPDATE_BYTES",
    "RefusalHook",
]

log = logging.getLogger(__name__)

_FREE, _WRITING, _DONE = 0, 1, 2
_MEMORY = 1024
#: The largest update accepted until a campaign sets a tighter limit (PDMFED_MAX_UPDATE_BYTES).
DEFAULT_MAX_UPDATE_BYTES = 2 * 1024**3


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
    sender: str
    size: int
    total: int
    sha256_all: str
    created: float
    buffer: np.ndarray
    state: bytearray
    msg_ids: list[bytes | None] = field(default_factory=list)
    digests: list[bytes | None] = field(default_factory=list)
    received: int = 0
    #: Bytes of chunks accepted or being written: what this update holds in memory.
    committed: int = 0


def _check_chunk(chunk: Mapping[str, Any]) -> dict[str, Any]:
    # The envelope's validation of the chunk map (same rules, same errors).
    checked = validate_chunk(chunk)
    if checked is None:
        raise ChunkError("not a chunk")
    return checked


#: Called with (sender, error) whenever reassembly refuses a sender's chunk or drops one of its
#: updates (over a limit, evicted, timed out); expiries come from the timer thread.
RefusalHook = Callable[[str, PdmFedError], None]


class UpdateLimits:
    """Per-campaign update size limits, the largest of which applies (else the default); the
    in-memory and the shared chunk assemblers both keep them. Needs ``default_max_update_bytes``,
    ``_limits`` (an OrderedDict) and ``_lock``."""

    default_max_update_bytes: int
    _limits: OrderedDict[str, int]
    _lock: threading.Lock

    @property
    def max_update_bytes(self) -> int:
        """The largest claim accepted: the largest campaign limit set, else the default."""
        return max(self._limits.values(), default=self.default_max_update_bytes)

    def limit_update_bytes(self, key: str, nbytes: int | None) -> None:
        """Set (None: remove) the update limit of ``key`` (a campaign); the largest one applies."""
        with self._lock:
            self._limits.pop(key, None)
            if nbytes is not None:
                if nbytes < 1:
                    raise ValueError("an update limit must be positive")
                self._limits[key] = int(nbytes)
                while len(self._limits) > _MEMORY:
                    self._limits.popitem(last=False)


class ChunkAssembler(UpdateLimits):
    """Reassembles chunked payloads: any order, fair bounded memory, timeout, typed errors.

    Thread-safe. ``reserve`` hands out the slot a chunk's plaintext must be written to (so a
    sealer can decrypt straight into it), ``commit`` records it once verified and returns the
    whole payload buffer when the last chunk arrives; ``release`` gives a slot back after a
    failed verification. ``add`` does all three for plaintext already in hand.

    Fairness: every limit is per sender, so one sender (a stolen key) can never block another.
    A claim (the ``size`` in a first chunk) may not exceed ``max_update_bytes`` (the largest
    update the campaign's model can produce, see ``limit_update_bytes``) and books nothing:
    memory counts as chunks arrive, against the sender's ``sender_budget_bytes``. A sender may
    have ``updates_per_sender`` updates open; one more, or more bytes than its budget, evicts
    that sender's own oldest update. Incomplete updates expire after ``timeout_s`` on a timer
    thread that runs while any update is open. Every refusal is counted in ``refusals`` by
    sender and reported to ``on_refused``.
    """

    def __init__(
        self,
        *,
        max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES,
        updates_per_sender: int = 4,
        sender_budget_bytes: int | None = None,
        max_senders: int = 64,
        timeout_s: float = 300.0,
        max_chunk_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_update_bytes < 1 or updates_per_sender < 1 or max_senders < 1:
            raise ValueError("reassembly limits must be positive")
        self.default_max_update_bytes = max_update_bytes
        self.updates_per_sender = updates_per_sender
        self._sender_budget = sender_budget_bytes
        self.max_senders = max_senders
        self.timeout_s = timeout_s
        self.max_chunk_bytes = max_chunk_bytes
        self.on_refused: RefusalHook | None = None
        self.refusals: Counter[str] = Counter()
        self._clock = clock
        self._lock = threading.Lock()
        self._limits: OrderedDict[str, int] = OrderedDict()
        self._open: dict[bytes, _Assembly] = {}
        self._committed: Counter[str] = Counter()
        self._done: OrderedDict[bytes, frozenset[bytes]] = OrderedDict()
        self._expired: OrderedDict[bytes, str] = OrderedDict()
        self._timer: threading.Timer | None = None

    # -- limits (UpdateLimits) --------------------------------------------------------------

    @property
    def sender_budget_bytes(self) -> int:
        """Bytes one sender's open updates may hold (default: its update slots at the cap)."""
        if self._sender_budget is not None:
            return self._sender_budget
        return self.updates_per_sender * self.max_update_bytes

    @sender_budget_bytes.setter
    def sender_budget_bytes(self, value: int | None) -> None:
        self._sender_budget = value

    # -- state ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Updates waiting for more chunks."""
        return len(self._open)

    @property
    def inflight_bytes(self) -> int:
        """Bytes of chunks held (accepted or being written) across every open update."""
        return sum(self._committed.values())

    def pending_by_sender(self) -> dict[str, int]:
        """Open updates per sender."""
        with self._lock:
            return dict(Counter(a.sender for a in self._open.values()))

    def committed_by_sender(self) -> dict[str, int]:
        """Bytes held per sender."""
        with self._lock:
            return {k: v for k, v in self._committed.items() if v}

    # -- expiry ---------------------------------------------------------------------------
    def expire(self, now: float | None = None) -> list[ChunkError]:
        """Drop updates older than the timeout; one ChunkError per dropped update."""
        with self._lock:
            dropped = self._expire_locked(self._clock() if now is None else now)
        self._report(dropped)
        return [err for _, err in dropped]

    def _expire_locked(self, now: float) -> list[tuple[str, ChunkError]]:
        dropped = []
        for uid, a in list(self._open.items()):
            if now - a.created <= self.timeout_s:
                continue
            missing = [i for i in range(a.total) if a.state[i] != _DONE]
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            text = (
                f"chunked update {uid.hex()} from {a.origin!r} timed out after {self.timeout_s}s:"
                f" missing {len(missing)} of {a.total} chunks [{shown}]"
            )
            dropped.append((a.sender, self._refuse_locked(uid, text, "expired")))
        return dropped

    def _timer_interval(self) -> float:
        return max(0.05, min(self.timeout_s / 4, 5.0))

    def _arm_locked(self) -> None:
        if self._timer is None and self._open:
            self._timer = threading.Timer(self._timer_interval(), self._on_timer)
            self._timer.daemon = True
            self._timer.name = "pdmfed-chunk-expiry"
            self._timer.start()

    def close(self) -> None:
        """Stop the expiry timer (a later chunk arms it again)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            dropped = self._expire_locked(self._clock())
            self._arm_locked()
        self._report(dropped)

    # -- bookkeeping ----------------------------------------------------------------------
    def _drop(self, uid: bytes) -> _Assembly:
        a = self._open.pop(uid)
        self._committed[a.sender] -= a.committed
        if self._committed[a.sender] <= 0:
            del self._committed[a.sender]
        return a

    def _refuse_locked(self, uid: bytes, text: str, reason: str) -> ChunkError:
        """Drop an open update for good: its later chunks are refused with ``text``."""
        a = self._drop(uid)
        self._remember(self._expired, uid, text)
        self.refusals[a.sender] += 1
        return ChunkError(text, reason=reason)

    def _report(self, refused: list[tuple[str, PdmFedError]]) -> None:
        hook = self.on_refused
        if hook is None:
            return
        for sender, err in refused:
            try:
                hook(sender, err)
            except Exception:  # a metrics hook must never break reassembly
                log.exception("chunk refusal hook failed")

    @staticmethod
    def _remember(book: OrderedDict[bytes, Any], uid: bytes, value: Any) -> None:
        book[uid] = value
        while len(book) > _MEMORY:
            book.popitem(last=False)

    def _oldest_of(self, sender: str, *, besides: bytes) -> bytes | None:
        candidates = [(a.created, uid) for uid, a in self._open.items()
                      if a.sender == sender and uid != besides]  # fmt: skip
        return min(candidates)[1] if candidates else None

    # -- the chunk path -------------------------------------------------------------------
    def reserve(
        self,
        origin: Hashable,
        chunk: Mapping[str, Any],
        msg_id: bytes = b"",
        *,
        sender: str | None = None,
    ) -> memoryview:
        """The writable slot for this chunk's plaintext; raises ChunkError/ReplayError/Oversize.

        ``origin`` binds the chunks of one update together (every chunk must share it);
        ``sender`` (default ``origin``) is whose budget the chunk counts against.
        """
        who = str(origin if sender is None else sender)
        dropped: list[tuple[str, PdmFedError]] = []
        try:
            with self._lock:
                slot = self._reserve_locked(origin, who, _check_chunk(chunk), msg_id, dropped)
                self._arm_locked()
        except PdmFedError as err:
            with self._lock:
                self.refusals[who] += 1
            dropped.append((who, err))
            raise
        finally:
            self._report(dropped)
        return slot

    def _reserve_locked(
        self,
        origin: Hashable,
        sender: str,
        c: dict[str, Any],
        msg_id: bytes,
        dropped: list[tuple[str, PdmFedError]],
    ) -> memoryview:
        uid, index, total, size = c["update_id"], c["index"], c["total"], c["size"]
        dropped += self._expire_locked(self._clock())
        if uid in self._done:
            if msg_id and msg_id in self._done[uid]:
                raise ReplayError(f"chunk {index} of update {uid.hex()} was already accepted")
            raise ChunkError(f"duplicate chunk {index}: update {uid.hex()} is already complete")
        if uid in self._expired:
            raise ChunkError(self._expired[uid])
        a = self._open.get(uid)
        if a is None:
            a = self._start(uid, origin, sender, c, dropped)
        elif (a.origin, a.total, a.size, a.sha256_all) != (origin, total, size, c["sha256_all"]):
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
        start, end = chunk_bounds(size, total, index)
        self._book(uid, a, end - start, dropped)
        a.state[index] = _WRITING
        return memoryview(a.buffer)[start:end]

    def _book(
        self, uid: bytes, a: _Assembly, n: int, dropped: list[tuple[str, PdmFedError]]
    ) -> None:
        """Count ``n`` more bytes against the sender, evicting its own oldest updates if needed."""
        budget = self.sender_budget_bytes
        while self._committed[a.sender] + n > budget:
            oldest = self._oldest_of(a.sender, besides=uid)
            if oldest is None:
                if a.received == 0 and _WRITING not in a.state:
                    self._drop(uid)
                raise OversizeMessage(
                    f"sender {a.sender!r} would hold {self._committed[a.sender] + n} bytes in"
                    f" reassembly; its budget is {budget}"
                )
            text = (
                f"chunked update {oldest.hex()} from {a.sender!r} evicted: the sender went over"
                f" its reassembly budget of {budget} bytes"
            )
            dropped.append((a.sender, self._refuse_locked(oldest, text, "oversize")))
        a.committed += n
        self._committed[a.sender] += n

    def _start(
        self,
        uid: bytes,
        origin: Hashable,
        sender: str,
        c: dict[str, Any],
        dropped: list[tuple[str, PdmFedError]],
    ) -> _Assembly:
        size, total = c["size"], c["total"]
        cap = self.max_update_bytes
        if size > cap:
            raise OversizeMessage(
                f"chunked update of {size} bytes exceeds the largest update allowed ({cap} bytes,"
                " from the campaign's model)"
            )
        if self.max_chunk_bytes is not None and -(-size // total) > self.max_chunk_bytes:
            raise ChunkError(f"{total} chunks cannot carry {size} bytes within the chunk limit")
        mine = sum(1 for a in self._open.values() if a.sender == sender)
        if not mine and len({a.sender for a in self._open.values()}) >= self.max_senders:
            raise ChunkError(f"{self.max_senders} senders already have chunked updates in flight")
        while mine >= self.updates_per_sender:
            oldest = self._oldest_of(sender, besides=uid)
            assert oldest is not None
            text = (
                f"chunked update {oldest.hex()} from {sender!r} evicted: the sender opened more"
                f" than {self.updates_per_sender} updates at once"
            )
            dropped.append((sender, self._refuse_locked(oldest, text, "oversize")))
            mine -= 1
        try:
            # Uninitialised: address space only; pages are committed as chunks are written.
            buffer = np.empty(size, dtype=np.uint8)
        except MemoryError:  # strict overcommit or an address-space limit: a refusal, not a crash
            raise OversizeMessage(f"cannot reserve {size} bytes for a chunked update") from None
        a = _Assembly(
            origin=origin,
            sender=sender,
            size=size,
            total=total,
            sha256_all=c["sha256_all"],
            created=self._clock(),
            buffer=buffer,
            state=bytearray(total),
            msg_ids=[None] * total,
            digests=[None] * total,
        )
        self._open[uid] = a
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
            if a is None or a.state[index] != _WRITING:
                return
            a.state[index] = _FREE
            start, end = chunk_bounds(a.size, a.total, index)
            a.committed -= end - start
            self._committed[a.sender] -= end - start
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
        *,
        sender: str | None = None,
    ) -> np.ndarray | None:
        """Copy one chunk's plaintext in; the whole payload buffer when complete."""
        slot = self.reserve(origin, chunk, msg_id, sender=sender)
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
