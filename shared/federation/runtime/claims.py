"""The claim-check store: large updates sealed once into a directory every service mounts.

Where ``PDMFED_CLAIM_DIR`` is set, a message type whose contract allows it (``by_reference``:
update.raw, update.screened; with ``PDMFED_CLAIM_MODELS``, where the orchestrator mounts the
store too, also the global model's round.open and round.completed) with an encoded payload of
``min_bytes`` or more is sealed (the usual envelope: AES-GCM, checksum, Ed25519) into
``<claim dir>/<producer>/<random>`` inside the transaction that queues it: the file is fsynced
and renamed into place before that transaction commits the outbox row holding the reference
(:class:`~federation.wire.claims.ClaimReference`), so a published reference always names a
committed body; a rolled-back transaction removes it.
A consumer reads the body by reference, checks its size and binding digest (the SHA-256 of its
header, tag and signature: :func:`~federation.wire.envelope.binding_digest`; no second pass over
the ciphertext) against the (signed) reference, then opens it like any message (signature,
AEAD, checksum of the plaintext); a missing body is a
:class:`~federation.errors.ClaimError`, a different one an IntegrityError — typed rejections,
counted in ``pdmfed_messages_rejected_total``.

Kept bodies: a consumer that must hold a received update until its round is complete (security
until screening, the aggregator until aggregation) keeps the body it arrived in by a hard link
in its own folder (:meth:`ClaimStore.keep`: no bytes copied) and stores only the rest of the
value with a pin naming the link (``Transaction.keep_received``): the update is not encoded,
written, fsynced and read back a second time. Its decoded fields stay in a bounded in-process
cache (``KEPT_CACHE_BYTES``); where they are not there (a restart, or another replica finishing
the round) the body is read and checked again exactly as on arrival (:meth:`ClaimStore.reopen`).

Retention: a body is kept while an outbox row or a pin names it and ``retention_s`` after its
message was last handed to the broker (the replay window plus skew, the inbox's retention: any
later delivery of the message is refused as expired anyway); its producer's store removes older
ones (:meth:`ClaimStore.collect`, at start and with the inbox pruning).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import (
    BusError,
    ClaimError,
    IntegrityError,
    MalformedMessage,
    OversizeMessage,
)
from federation.runtime.blobs import BlobDirectory, read_whole
from federation.wire.claims import CLAIM_KEY, ClaimReference
from federation.wire.codec import PayloadParts, rough_nbytes
from federation.wire.contracts import may_refer, reaches_orchestrator
from federation.wire.envelope import MAX_HEADER_BYTES, binding_digest, binding_spans

__all__ = ["ClaimStore", "CLAIM_MIN_BYTES", "KEPT_CACHE_BYTES", "KeptBody", "live_claims"]

log = logging.getLogger(__name__)

#: Payloads at least this big travel by reference: what a store keeps out of line anyway.
CLAIM_MIN_BYTES = 256 * 1024
#: Bodies sealed and written at once (security screens a round's updates together and emits
#: them all in one transaction; the connector seals each datasite's update as it arrives): one
#: per core, at most 4. More only share the cores, so every body is late, where these finish
#: one after another and the first is on its way while the next is sealed.
DEPOSIT_WORKERS = max(1, min(4, os.cpu_count() or 1))
#: Decoded fields of kept bodies held in memory, at most (least recently used dropped first):
#: a 10M-parameter round of 10 updates is 400 MB.
KEPT_CACHE_BYTES = 1024**3


@dataclass(frozen=True)
class KeptBody:
    """A received body a service keeps (``ref``, a link in its own folder) as the stored form of
    a value's ``fields``, and what it must be when it is opened again: one of ``msg_types``, of
    this datasite and round."""

    ref: ClaimReference
    fields: tuple[str, ...]
    msg_types: tuple[str, ...]
    datasite_id: str
    round_num: int

    def to_record(self) -> dict[str, Any]:
        """The pin as stored beside the rest of the value."""
        return {
            **self.ref.to_payload()[CLAIM_KEY],
            "fields": list(self.fields),
            "msg_types": list(self.msg_types),
            "datasite_id": self.datasite_id,
            "round_num": self.round_num,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> KeptBody:
        """The pin ``to_record`` stored."""
        return cls(
            ClaimReference(record["ref"], record["sha256"], int(record["size"])),
            tuple(record["fields"]),
            tuple(record["msg_types"]),
            str(record["datasite_id"]),
            int(record["round_num"]),
        )


class ClaimStore:
    """Sealed bodies in ``root/<producer>`` (written here) and the other producers' folders."""

    def __init__(
        self,
        root: Path,
        producer: str,
        sealer: Any,
        *,
        min_bytes: int = CLAIM_MIN_BYTES,
        sync: bool = True,
        models: bool = False,
    ) -> None:
        self.root = Path(root)
        #: The orchestrator mounts this store too: types it consumes (the global model's
        #: round.open and round.completed) may go by reference as well (PDMFED_CLAIM_MODELS).
        self.models = models
        self.producer = producer
        self.sealer = sealer
        self.min_bytes = int(min_bytes)
        self._sync = sync
        self._own = BlobDirectory(self.root / producer, sync=sync) if producer else None
        self._workers = ThreadPoolExecutor(
            max_workers=DEPOSIT_WORKERS, thread_name_prefix="pdmfed-claim"
        )
        #: name of a kept body -> (its decoded fields, their bytes), least recently used first.
        self._kept: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._kept_bytes = 0
        self._kept_lock = threading.Lock()
        self.kept_cache_bytes = KEPT_CACHE_BYTES
        if producer:
            ClaimReference(f"{producer}/{'0' * 32}", "0" * 64, 1)  # a name refs can carry

    @classmethod
    def reader(cls, root: Path, sealer: Any) -> ClaimStore:
        """A store that only redeems references (the orchestrator): it has no folder of its
        own, so it never writes into the claim directory (which may be mounted read-only)."""
        return cls(root, "", sealer)

    # -- producing --------------------------------------------------------------------
    def applies(self, msg_type: str, nbytes: int) -> bool:
        """Whether a payload of ``nbytes`` encoded bytes of this type goes by reference."""
        if nbytes < self.min_bytes or not may_refer(msg_type):
            return False
        return self.models or not reaches_orchestrator(msg_type)

    def deposit(
        self, msg_type: str, parts: PayloadParts, *, datasite_id: str = "", round_num: int = 0
    ) -> ClaimReference:
        """Seal ``parts`` into one body, store it durably; the reference naming it."""
        body = self.sealer.seal_whole(msg_type, parts, datasite_id=datasite_id, round_num=round_num)
        digest = binding_digest(body)
        name = self._own.write(PayloadParts([body], len(body)))
        return ClaimReference(f"{self.producer}/{name}", digest, len(body))

    def deposit_later(
        self, msg_type: str, parts: PayloadParts, *, datasite_id: str = "", round_num: int = 0
    ) -> Future[ClaimReference]:
        """``deposit`` on a worker thread: a transaction emitting several updates seals and
        writes them in parallel (AES, SHA-256 and fsync release the GIL)."""
        return self._workers.submit(
            self.deposit, msg_type, parts, datasite_id=datasite_id, round_num=round_num
        )

    def keep(self, ref: ClaimReference) -> ClaimReference | None:
        """Keep the body ``ref`` names under this producer by a hard link (no bytes sealed or
        written; its retention becomes this producer's) and the reference naming the link; None
        when the body is gone or is not the one ``ref`` names (the caller stores its own)."""
        try:
            name = self._own.link(self.root / ref.producer / ref.name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("claim %s cannot be linked, not kept: %s", ref.ref, exc)
            return None
        kept = ClaimReference(f"{self.producer}/{name}", ref.sha256, ref.size)
        try:
            # Its retention restarts now: a collection before the reference commits spares it.
            os.utime(self.root / kept.producer / kept.name)
            same = self._digest_of(kept) == ref.sha256
        except (OSError, MalformedMessage):
            same = False
        if not same:
            log.warning("claim %s changed since it was received; not kept", ref.ref)
            self._own.remove([name])
            return None
        return kept

    def _digest_of(self, ref: ClaimReference) -> str:
        """The binding digest of a stored body, read from its header and tail only."""
        with open(self.root / ref.producer / ref.name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(min(size, MAX_HEADER_BYTES))
            _, tag_at = binding_spans(head, size)
            f.seek(tag_at)
            return binding_digest(head, tail=f.read(), size=size)

    def discard(self, refs: Iterable[ClaimReference]) -> None:
        """Remove bodies whose transaction rolled back (never referenced by a message)."""
        names = [r.name for r in refs if r.producer == self.producer]
        self.forget(names)
        self._own.remove(names)

    # -- kept bodies: decoded fields in memory, the body on disk ------------------------
    def remember(self, name: str, fields: dict[str, Any]) -> None:
        """Hold the decoded ``fields`` of the kept body ``name`` (evicting the least recent)."""
        nbytes = rough_nbytes(fields, self.kept_cache_bytes)
        if nbytes > self.kept_cache_bytes:
            return
        with self._kept_lock:
            old = self._kept.pop(name, None)
            self._kept_bytes += nbytes - (old[1] if old else 0)
            self._kept[name] = (fields, nbytes)
            while self._kept_bytes > self.kept_cache_bytes:
                _, (_, dropped) = self._kept.popitem(last=False)
                self._kept_bytes -= dropped

    def forget(self, names: Iterable[str]) -> None:
        """Drop the decoded fields of kept bodies no value pins any more."""
        with self._kept_lock:
            for name in names:
                entry = self._kept.pop(name, None)
                if entry is not None:
                    self._kept_bytes -= entry[1]

    def recall(self, kept: KeptBody) -> dict[str, Any]:
        """The fields a kept body stands for: from memory, else its body read and opened again
        with every check of its arrival (size, binding digest, signature and the sender's role,
        AEAD, checksum, type, datasite and round). ClaimError when the body is gone."""
        name = kept.ref.name
        with self._kept_lock:
            entry = self._kept.get(name)
            if entry is not None:
                self._kept.move_to_end(name)
                return dict(entry[0])
        payload = self.reopen(kept)
        try:
            fields = {f: payload[f] for f in kept.fields}
        except KeyError as exc:
            raise IntegrityError(f"kept body {kept.ref.ref} lacks the field {exc}") from None
        self.remember(name, fields)
        return dict(fields)

    def reopen(self, kept: KeptBody) -> dict[str, Any]:
        """The payload of a kept body, read and checked again (see ``recall``)."""
        from federation.wire.envelope import ENVELOPE_RESERVE

        limit = int(self.sealer.assembler.max_update_bytes) + ENVELOPE_RESERVE
        body = self.fetch(kept.ref, max_bytes=limit)
        opened = self.sealer.open_kept(
            body,
            msg_types=kept.msg_types,
            datasite_id=kept.datasite_id,
            round_num=kept.round_num,
            max_bytes=limit,
        )
        from federation.wire.messages import parse_payload

        try:  # validated as on arrival: the fields come back in the form the handler stored
            return parse_payload(opened.envelope.msg_type, opened.payload).to_payload()
        except (ValueError, TypeError, LookupError) as exc:
            raise MalformedMessage(f"kept body {kept.ref.ref} does not decode: {exc}") from exc

    def touch(self, payload: Any) -> None:
        """Restart the retention of the body a payload references (its message goes out now)."""
        ref = ClaimReference.from_payload(payload)
        if ref is None or ref.producer != self.producer:
            return
        try:
            os.utime(self.root / ref.producer / ref.name)
        except FileNotFoundError:
            log.error("claim %s vanished before its message was published", ref.ref)

    def collect(self, live: set[str], retention_s: float) -> int:
        """Remove own bodies no pending message names, idle for ``retention_s``; how many."""
        return self._own.collect(live, older_than_s=retention_s)

    # -- consuming --------------------------------------------------------------------
    def fetch(self, ref: ClaimReference, *, max_bytes: int) -> memoryview:
        """The body ``ref`` names, checked against its size and binding digest.

        ClaimError when missing, IntegrityError when it differs, OversizeMessage when the
        reference claims more than ``max_bytes``; an I/O failure other than absence is
        infrastructure (BusError: the delivery is retried).
        """
        if ref.size > max_bytes:
            raise OversizeMessage(f"claim check of {ref.size} bytes exceeds {max_bytes} bytes")
        path = self.root / ref.producer / ref.name
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != ref.size:
                    raise IntegrityError(
                        f"claim {ref.ref} holds {size} bytes, its reference says {ref.size}"
                    )
                try:
                    buf = read_whole(f, size)
                except OSError:  # shorter than it was a moment ago: not the body named
                    raise IntegrityError(f"claim {ref.ref} changed while it was read") from None
        except FileNotFoundError:
            raise ClaimError(f"claim {ref.ref} is not in the claim store") from None
        except OSError as exc:
            raise BusError(f"claim store unreadable: {exc}", reason="claim_store") from exc
        try:
            digest = binding_digest(buf)
        except MalformedMessage:
            raise IntegrityError(f"claim {ref.ref} is not a sealed body") from None
        if not hmac.compare_digest(digest, ref.sha256) and not _legacy_match(buf, ref):
            raise IntegrityError(f"claim {ref.ref} does not match its digest")
        return buf


def _legacy_match(body: Any, ref: ClaimReference) -> bool:
    """Whether ``ref`` names ``body`` by the SHA-256 of all its bytes, as references written
    before binding digests do (still in an outbox across an upgrade: never lost for it)."""
    return hmac.compare_digest(hashlib.sha256(body).hexdigest(), ref.sha256)


def live_claims(payloads: Iterable[Any]) -> set[str]:
    """File names of the bodies these (pending outbox) payloads reference."""
    live = set()
    for payload in payloads:
        try:
            ref = ClaimReference.from_payload(payload)
        except MalformedMessage:  # not a reference we wrote; keep collecting
            continue
        if ref is not None:
            live.add(ref.name)
    return live
