"""Seal and open message bodies: AES-256-GCM with header AAD, checksum, Ed25519, freshness.

Sealing streams the payload's buffers (tensor memory included) through SHA-256 and AES-GCM
straight into the body, and opening decrypts straight into the buffer the decoded tensors view,
so a large update is copied once on the way out and not at all on the way in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from federation.crypto._buffers import finish, new_bytes
from federation.crypto.keys import KeyRing
from federation.crypto.replay import InMemorySeenStore, ReplayGuard, seen_store_from_settings
from federation.crypto.signing import SigningIdentity, TrustStore, check_sender_name
from federation.errors import (
    AuthError,
    ChunkError,
    ConfigError,
    IntegrityError,
    MalformedMessage,
    OversizeMessage,
)
from federation.wire.chunking import (
    DEFAULT_MAX_UPDATE_BYTES,
    ChunkAssembler,
    chunk_bounds,
    chunk_count,
    chunks_digest,
)
from federation.wire.codec import decode_payload, encode_payload_parts
from federation.wire.envelope import (
    COMMUNICATION_TYPE,
    ENVELOPE_RESERVE,
    MAX_CHUNKS,
    MSG_ID_LEN,
    NONCE_LEN,
    SECURITY_VERSION,
    SIGNATURE_LEN,
    TAG_LEN,
    Envelope,
    decode_envelope,
    encode_header,
    signed_bytes_for,
    validate_header,
)
from federation.wire.messages import Message, MsgType

__all__ = ["Opened", "Sealer", "Sealing", "DEFAULT_MAX_MESSAGE_BYTES"]

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Opened:
    """A verified message: its envelope and decoded payload map."""

    envelope: Envelope
    payload: dict[str, Any]


def _sha256(pieces: Iterable[Any]) -> Any:
    h = hashlib.sha256()
    for p in pieces:
        h.update(p)
    return h


def _slice(pieces: list[Any], start: int, end: int) -> list[memoryview]:
    """Views of bytes [start, end) of the concatenation of ``pieces``."""
    out, pos = [], 0
    for p in pieces:
        mv = memoryview(p).cast("B")
        n = len(mv)
        lo, hi = max(start, pos), min(end, pos + n)
        if lo < hi:
            out.append(mv[lo - pos : hi - pos])
        pos += n
        if pos >= end:
            break
    return out


def _msg_type(msg_type: str | MsgType) -> MsgType:
    try:
        return MsgType(msg_type)
    except ValueError as exc:
        raise MalformedMessage(f"unknown msg_type {msg_type!r}") from exc


#: Chunk digests of a payload at least this large are computed on two threads (hashlib
#: releases the GIL): the pass over the payload before the first chunk can go out is halved.
PARALLEL_DIGEST_BYTES = 4 * 1024 * 1024
_digest_pool: ThreadPoolExecutor | None = None
_digest_pool_lock = threading.Lock()


def _chunk_digests(slices: list[list[memoryview]], size: int) -> list[bytes]:
    """SHA-256 of each chunk; for a large payload on a multi-core host, every other chunk is
    hashed on a helper thread while this one hashes the rest (hashlib releases the GIL)."""
    global _digest_pool
    if len(slices) < 2 or size < PARALLEL_DIGEST_BYTES or (os.cpu_count() or 1) < 2:
        return [_sha256(s).digest() for s in slices]
    with _digest_pool_lock:
        if _digest_pool is None:
            _digest_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdmfed-digest")
        try:
            odd = [_digest_pool.submit(_sha256, s) for s in slices[1::2]]
        except RuntimeError:  # interpreter shutting down: no new threads
            return [_sha256(s).digest() for s in slices]
    even = [_sha256(s).digest() for s in slices[0::2]]
    digests: list[bytes] = []
    for i in range(len(slices)):
        if i % 2 == 0:
            digests.append(even[i // 2])
            continue
        future = odd[i // 2]
        # Not started (the helper is busy with another sealer's chunks): hash it here.
        h = _sha256(slices[i]) if future.cancel() else future.result()
        digests.append(h.digest())
    return digests


class Sealing:
    """The bodies of one sealed payload, produced one at a time (see ``Sealer.prepare``).

    ``count`` bodies in all; ``nbytes`` is the encoded payload size. Iterating seals the next
    body; a chunked payload's chunk digests are computed when the first body is asked for.
    """

    def __init__(
        self,
        sealer: Sealer,
        kind: MsgType,
        parts: list[Any],
        nbytes: int,
        count: int,
        datasite_id: str,
        round_num: int,
    ) -> None:
        self.kind = kind
        self.nbytes = nbytes
        self.count = count
        self._sealer = sealer
        self._parts = parts
        self._datasite_id = datasite_id
        self._round_num = round_num
        self._iter = self._bodies()

    def __iter__(self) -> Iterator[bytes]:
        return self._iter

    def __next__(self) -> bytes:
        return next(self._iter)

    def next_body(self) -> bytes | None:
        """The next sealed body, or None when all were produced."""
        return next(self._iter, None)

    def _bodies(self) -> Iterator[bytes]:
        seal, kind = self._sealer._seal_body, self.kind
        ds, rn, size, total = self._datasite_id, self._round_num, self.nbytes, self.count
        if total == 1:
            yield seal(kind, self._parts, size, ds, rn, None, None)
            return
        slices = [_slice(self._parts, *chunk_bounds(size, total, i)) for i in range(total)]
        digests = _chunk_digests(slices, size)
        base = {
            "update_id": os.urandom(MSG_ID_LEN),
            "total": total,
            "size": size,
            "sha256_all": chunks_digest(size, total, digests),
        }
        for i, pieces in enumerate(slices):
            start, end = chunk_bounds(size, total, i)
            chunk = {**base, "index": i}
            yield seal(kind, pieces, end - start, ds, rn, chunk, digests[i].hex())


class Sealer:
    """Seals payloads into envelope bodies and opens bodies into verified payloads.

    Opening checks, in order: decode → version → key_id → signature → AEAD (AAD = header) →
    checksum → replay/expiry. Only federation.errors types are raised.
    """

    def __init__(
        self,
        keyring: KeyRing,
        *,
        sender: str,
        identity: SigningIdentity | None = None,
        trust: TrustStore | None = None,
        replay: ReplayGuard | None = None,
        require_signature: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        window_s: float = 630.0,
        max_tensor_bytes: int | None = None,
        max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES,
        assembler: ChunkAssembler | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sender = check_sender_name(sender)
        if identity is not None and identity.sender != sender:
            raise ConfigError(f"signing identity is {identity.sender!r}, sender is {sender!r}")
        if max_message_bytes < 2 * ENVELOPE_RESERVE:
            raise ConfigError(f"max_message_bytes must be at least {2 * ENVELOPE_RESERVE}")
        self.keyring = keyring
        self.identity = identity
        self.trust = trust
        self.replay = replay if replay is not None else ReplayGuard(InMemorySeenStore(), window_s)
        self.require_signature = require_signature
        self.max_message_bytes = max_message_bytes
        self.max_tensor_bytes = max_tensor_bytes
        self.assembler = assembler or ChunkAssembler(
            max_chunk_bytes=max_message_bytes, max_update_bytes=max_update_bytes
        )
        self._clock = clock
        #: Called with each envelope once its signature is verified, before anything is
        #: decrypted or reassembled; raises to refuse it (the consumer's authorization).
        self.authorize: Callable[[Envelope], None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        sender: str,
        identity: SigningIdentity | None = None,
        trust: TrustStore | None = None,
        role: str | None = None,
    ) -> Sealer:
        """A sealer from Settings; keys_dir (or state_dir/keys in demo) supplies Ed25519 keys.

        ``role`` names the shared replay store's namespace and Redis user (default: the sender).
        """
        settings.check_signature_policy()
        keys_dir: Path | None = settings.keys_dir
        if keys_dir is None and settings.demo:
            keys_dir = Path(settings.state_dir) / "keys"
        if keys_dir is not None:
            if identity is None:
                identity = SigningIdentity.load_or_create(keys_dir, sender)
            if trust is None:
                trust = TrustStore.from_dir(keys_dir)
        window = settings.freshness_window_s
        return cls(
            KeyRing.from_settings(settings),
            sender=sender,
            identity=identity,
            trust=trust,
            replay=ReplayGuard.from_settings(
                seen_store_from_settings(settings, role=role or sender), settings
            ),
            require_signature=settings.require_signatures,
            max_message_bytes=settings.max_message_bytes,
            window_s=window,
            max_tensor_bytes=settings.max_tensor_bytes,
            max_update_bytes=settings.max_update_bytes,
        )

    # --- sealing ---------------------------------------------------------------------
    def seal(
        self,
        msg_type: str | MsgType,
        payload: Mapping[str, Any] | Message,
        *,
        datasite_id: str = "",
        round_num: int = 0,
    ) -> list[bytes]:
        """One body, or several separately sealed chunk bodies when over max_message_bytes."""
        return list(self.prepare(msg_type, payload, datasite_id=datasite_id, round_num=round_num))

    def prepare(
        self,
        msg_type: str | MsgType,
        payload: Mapping[str, Any] | Message,
        *,
        datasite_id: str = "",
        round_num: int = 0,
    ) -> Sealing:
        """Encode and validate now; seal body by body while iterating the result.

        Lets a publisher send chunk ``i`` while chunk ``i + 1`` is being sealed. The encoded
        payload references the caller's tensor memory: leave it unchanged until done.
        """
        kind, parts = self._encode(msg_type, payload)
        limit = self.max_message_bytes - ENVELOPE_RESERVE
        size = parts.nbytes
        total = 1 if size <= limit else chunk_count(size, limit)
        if total > MAX_CHUNKS:
            raise OversizeMessage(f"payload of {size} bytes needs more than {MAX_CHUNKS} chunks")
        return Sealing(self, kind, parts.parts, size, total, datasite_id, round_num)

    def seal_envelope(
        self,
        msg_type: str | MsgType,
        payload: Mapping[str, Any] | Message,
        *,
        datasite_id: str = "",
        round_num: int = 0,
    ) -> Envelope:
        """One envelope, never chunked (the seed API's ``secure_package``)."""
        kind, parts = self._encode(msg_type, payload)
        body = self._seal_body(kind, parts.parts, parts.nbytes, datasite_id, round_num, None, None)
        return decode_envelope(body)

    def seal_whole(
        self, msg_type: str | MsgType, parts: Any, *, datasite_id: str = "", round_num: int = 0
    ) -> bytes:
        """One body of any size for already encoded ``parts`` (a claim-check's stored body)."""
        kind = _msg_type(msg_type)
        if self.require_signature and self.identity is None:
            raise ConfigError("signatures are required but this sealer has no signing identity")
        return self._seal_body(kind, parts.parts, parts.nbytes, datasite_id, round_num, None, None)

    def _encode(self, msg_type: str | MsgType, payload: Any) -> tuple[MsgType, Any]:
        kind = _msg_type(msg_type)
        if isinstance(payload, Message):
            if payload.msg_type != kind:
                raise MalformedMessage(f"a {payload.msg_type.value} payload sent as {kind.value}")
            payload = payload.to_payload()
        if not isinstance(payload, Mapping):
            raise MalformedMessage("a payload must be a map (or a typed message)")
        if self.require_signature and self.identity is None:
            raise ConfigError("signatures are required but this sealer has no signing identity")
        return kind, encode_payload_parts(dict(payload))

    def _seal_body(
        self,
        kind: MsgType,
        pieces: list[Any],
        nbytes: int,
        datasite_id: str,
        round_num: int,
        chunk: dict[str, Any] | None,
        checksum: str | None,
    ) -> bytes:
        header = {
            "security_version": SECURITY_VERSION,
            "communication_type": COMMUNICATION_TYPE,
            "msg_type": kind.value,
            "msg_id": os.urandom(MSG_ID_LEN),
            "sender": self.sender,
            "key_id": self.keyring.active_id,
            "timestamp": float(self._clock()),
            "datasite_id": datasite_id,
            "round_num": round_num,
            "nonce": os.urandom(NONCE_LEN),
            "checksum": checksum or _sha256(pieces).hexdigest(),
            "chunk": chunk,
        }
        # Validates caller-supplied fields (datasite_id, round_num) like a receiver would.
        header = validate_header(header)
        ct_len = nbytes + TAG_LEN
        signed = self.identity is not None
        # The header is the body's first bytes and the AES-GCM associated data.
        aad = encode_header(header, ct_len, signed)
        # One allocation, written once: the body is the final bytes object (see _buffers).
        handle, out = new_bytes(len(aad) + ct_len + (SIGNATURE_LEN if signed else 0))
        out[: len(aad)] = aad
        pos = len(aad)
        cipher = Cipher(algorithms.AES(self.keyring.sealing_key()), modes.GCM(header["nonce"]))
        enc = cipher.encryptor()
        enc.authenticate_additional_data(aad)
        for piece in pieces:
            if len(piece):
                # The slack after the ciphertext (the tag at least) covers update_into's margin.
                pos += enc.update_into(piece, out[pos:])
        tail = enc.finalize()
        out[pos : pos + len(tail)] = tail
        pos += len(tail)
        tag = enc.tag
        out[pos : pos + TAG_LEN] = tag
        pos += TAG_LEN
        if signed:
            assert self.identity is not None
            out[pos:] = self.identity.sign(signed_bytes_for(aad, tag))
        out.release()
        return finish(handle)

    # --- opening ---------------------------------------------------------------------
    def open(self, body: Any, *, expected_msg_type: str | MsgType | None = None) -> Opened | None:
        """Verify and decode a body; None when it was a chunk and the payload is incomplete."""
        env = decode_envelope(body, max_bytes=self.max_message_bytes)
        return self.open_envelope(env, expected_msg_type=expected_msg_type)

    def open_envelope(
        self, env: Envelope, *, expected_msg_type: str | MsgType | None = None
    ) -> Opened | None:
        """``open`` for an already decoded envelope (e.g. the seed's ``secure_package``)."""
        if expected_msg_type is not None and env.msg_type != str(expected_msg_type):
            raise MalformedMessage(
                f"msg_type {env.msg_type} does not match routing key {expected_msg_type}"
            )
        aead = self.keyring.aead(env.key_id)
        aad = env.aad()
        ct = env.encrypted_data
        # Header and tag only: refusing a forgery costs the same whatever the body's size.
        verified = self._verify_signature(env, signed_bytes_for(aad, ct[len(ct) - TAG_LEN :]))
        if self.authorize is not None:
            self.authorize(env)
        if verified:
            # The header is authentic: a stale or already accepted message is refused before it
            # is decrypted or books reassembly memory (a replayed first chunk would otherwise
            # open an update for its sender and could evict that sender's genuine ones).
            self.replay.precheck(env.msg_id, env.timestamp)
        if env.chunk is not None:
            return self._open_chunk(env, aead, aad)
        plaintext = np.empty(len(ct) - TAG_LEN, dtype=np.uint8)
        self._decrypt(aead, env, aad, memoryview(plaintext))
        if not hmac.compare_digest(hashlib.sha256(plaintext).hexdigest(), env.checksum):
            raise IntegrityError("checksum of the decrypted payload does not match")
        self.replay.check(env.msg_id, env.timestamp)
        return Opened(env, self._decode(plaintext))

    def open_referenced(self, body: Any, outer: Envelope, *, max_bytes: int) -> Opened:
        """Verify and decode the body a claim-check message (``outer``, already opened) names.

        The body must be one unchunked envelope of the same sender, type, datasite and round,
        with a valid signature (from a trusted sender when signatures are required), AEAD tag
        and checksum. No freshness or replay check: the outer message is fresh and unique, and
        its signed digest binds this body (a re-published outbox row names the same body).
        """
        env = decode_envelope(body, max_bytes=max_bytes)
        if env.sender != outer.sender or env.msg_type != outer.msg_type:
            raise IntegrityError(
                "the referenced body is not the same sender's unchunked message of this type,"
                " datasite and round"
            )
        return self._open_body(env, outer)

    def open_forwarded(self, body: Any, outer: Envelope, *, max_bytes: int) -> Opened:
        """``open_referenced`` for a forwarding reference (wire.claims): the body is a message
        of the type ``outer``'s contract forwards, sealed by its own sender (whose role must be
        allowed to send that type), for the same datasite and round."""
        from federation.wire.contracts import forwarded_type

        env = decode_envelope(body, max_bytes=max_bytes)
        source = forwarded_type(outer.msg_type)
        if source is None or env.msg_type != source.value:
            raise IntegrityError(f"the forwarded body is not a {source} message")
        return self._open_body(env, outer)

    def open_kept(
        self,
        body: Any,
        *,
        msg_types: Iterable[str],
        datasite_id: str,
        round_num: int,
        max_bytes: int,
    ) -> Opened:
        """Verify and decode a body this service received by reference and kept
        (runtime.claims): one of ``msg_types``, of this datasite and round, with the checks of
        its arrival (signature and the sender's role, AEAD tag, checksum). No freshness or
        replay check: it was fresh and unique when it arrived, and it is opened again only
        because the fields it stands for are no longer in memory."""
        env = decode_envelope(body, max_bytes=max_bytes)
        if env.msg_type not in set(msg_types):
            raise IntegrityError(f"the kept body is a {env.msg_type} message")
        return self._open_body(env, env, expect=(datasite_id, int(round_num)))

    def _open_body(
        self,
        env: Envelope,
        outer: Envelope,
        *,
        expect: tuple[str, int] | None = None,
    ) -> Opened:
        """A referenced body's checks past its sender and type: unchunked, the outer message's
        datasite and round (or ``expect``), signature (and the sender's role; required when the
        outer message was signed), AEAD tag, checksum."""
        if expect is None:
            expect = (outer.datasite_id, outer.round_num)
        if env.chunk is not None or (env.datasite_id, env.round_num) != expect:
            raise IntegrityError(
                "the referenced body is not an unchunked message of this datasite and round"
            )
        aad = env.aad()
        ct = env.encrypted_data
        if not self._verify_signature(env, signed_bytes_for(aad, ct[len(ct) - TAG_LEN :])):
            if outer.signature is not None:
                raise AuthError("a signed claim check names an unsigned body")
        if self.authorize is not None:
            self.authorize(env)
        aead = self.keyring.aead(env.key_id)
        plaintext = np.empty(len(ct) - TAG_LEN, dtype=np.uint8)
        self._decrypt(aead, env, aad, memoryview(plaintext))
        if not hmac.compare_digest(hashlib.sha256(plaintext).hexdigest(), env.checksum):
            raise IntegrityError("checksum of the decrypted referenced payload does not match")
        return Opened(env, self._decode(plaintext))

    def _verify_signature(self, env: Envelope, signed: bytes | None = None) -> bool:
        """True when the signature was verified; False for an unsigned message allowed in."""
        known = self.trust is not None and env.sender in self.trust
        if env.signature is None or not known:
            if self.require_signature:
                if env.signature is None:
                    raise AuthError(f"unsigned message from {env.sender!r}")
                raise AuthError(f"sender {env.sender!r} is not in the trust store")
            return False
        if signed is None:
            signed = env.signed_bytes()
        self.trust.verify(env.sender, signed, env.signature)  # type: ignore[union-attr]
        return True

    @staticmethod
    def _decrypt(aead: AESGCM, env: Envelope, aad: bytes, out: memoryview) -> None:
        try:
            aead.decrypt_into(env.nonce, env.encrypted_data, aad, out)
        except InvalidTag:
            raise IntegrityError(
                "AES-GCM authentication failed (wrong key or altered bytes)"
            ) from None
        except ValueError as exc:
            raise MalformedMessage(f"ciphertext cannot be decrypted: {exc}") from exc

    def _decode(self, plaintext: Any) -> dict[str, Any]:
        payload = decode_payload(plaintext, max_tensor_bytes=self.max_tensor_bytes)
        if not isinstance(payload, dict):
            raise MalformedMessage("payload is not a map")
        return payload

    def _open_chunk(self, env: Envelope, aead: AESGCM, aad: bytes) -> Opened | None:
        chunk = env.chunk
        assert chunk is not None
        origin = (env.sender, env.msg_type, env.datasite_id, env.round_num)
        slot = self.assembler.reserve(origin, chunk, env.msg_id, sender=env.sender)
        try:
            if len(slot) != len(env.encrypted_data) - TAG_LEN:
                raise ChunkError(
                    f"chunk {chunk['index']} carries {len(env.encrypted_data) - TAG_LEN} bytes,"
                    f" its place needs {len(slot)}"
                )
            self._decrypt(aead, env, aad, slot)
            digest = hashlib.sha256(slot).digest()
            if not hmac.compare_digest(digest.hex(), env.checksum):
                raise IntegrityError("checksum of the decrypted chunk does not match")
            self.replay.check(env.msg_id, env.timestamp)
        except BaseException:
            self.assembler.release(chunk)
            raise
        buffer = self.assembler.commit(chunk, env.msg_id, digest)
        if buffer is None:
            return None
        return Opened(env, self._decode(buffer))
