"""Envelope v2: the fixed binary header every message body starts with; encode and decode.

A body is ``header | ciphertext | signature``. The header is a fixed layout of bounded fields
(big-endian), so a receiver reads it with a handful of ``struct`` calls and checks the
signature and the AES-GCM tag over raw bytes before it builds anything from the payload: no
msgpack of attacker-chosen size is parsed before the message is authenticated, and refusing
a forged body costs one signature check whatever its size.

    offset  bytes  field
    0       4      magic ``PDMF``
    4       1      wire version: 2
    5       1      flags: 0x01 signed, 0x02 chunk (other bits must be 0)
    6       2      header_len: bytes before the ciphertext (at most MAX_HEADER_BYTES)
    8       4      ct_len: ciphertext bytes, the 16-byte GCM tag included
    12      16     msg_id
    28      12     nonce
    40      8      timestamp (IEEE-754 double, finite)
    48      8      round_num (unsigned, < 2**63)
    56      32     checksum: SHA-256 of the plaintext
    88      64     chunk, when flagged: update_id (16), index (4), total (4), size (8),
                   sha256_all (32)
    then    1 + n  four UTF-8 strings, each after a one-byte length: msg_type, sender, key_id,
                   datasite_id

The body is exactly ``header_len + ct_len (+ 64 when signed)`` bytes. The header is the
AES-GCM associated data; the sender's Ed25519 signature covers the header and the GCM tag
(``signed_bytes_for``): the header carries the SHA-256 of the plaintext, which the opener checks
after decryption, so the signature binds the content without a pass over the ciphertext.
The encoding is canonical: a body that decodes re-encodes to the same bytes.

``Envelope`` keeps the seed's field names (``security_version``, ``communication_type``,
``encrypted_data``, ``checksum``, ``signature``...): ``to_dict`` is the seed's secure package.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.errors import MalformedMessage, OversizeMessage
from federation.wire.messages import MsgType

__all__ = [
    "SECURITY_VERSION",
    "COMMUNICATION_TYPE",
    "WIRE_MAGIC",
    "WIRE_VERSION",
    "MSG_ID_LEN",
    "NONCE_LEN",
    "TAG_LEN",
    "SIGNATURE_LEN",
    "MAX_HEADER_BYTES",
    "ENVELOPE_RESERVE",
    "MAX_CHUNKS",
    "HEADER_FIELDS",
    "Envelope",
    "binding_digest",
    "binding_spans",
    "validate_header",
    "validate_chunk",
    "encode_header",
    "signed_bytes_for",
    "encode_envelope",
    "decode_envelope",
]

#: The seed's ``security_version`` names the envelope version.
SECURITY_VERSION = "2.0"
COMMUNICATION_TYPE = "secure"
WIRE_MAGIC = b"PDMF"
WIRE_VERSION = 2
MSG_ID_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
SIGNATURE_LEN = 64
MAX_CHUNKS = 65536
_MAX_NAME = 255  # bytes of UTF-8 (one length byte)
_MAX_KEY_ID = 64
_MAX_CT = 2**32 - 1
_MAX_ROUND = 2**63 - 1
_MAX_SIZE = 2**48

_FLAG_SIGNED = 0x01
_FLAG_CHUNK = 0x02
_PREFIX = struct.Struct(">4sBBHI")  # magic, version, flags, header_len, ct_len
_FIXED = struct.Struct(">16s12sdQ32s")  # msg_id, nonce, timestamp, round_num, checksum
_CHUNK = struct.Struct(">16sIIQ32s")  # update_id, index, total, size, sha256_all
_STRINGS = ("msg_type", "sender", "key_id", "datasite_id")
#: The largest header: prefix, fixed fields, chunk and four strings at their limits.
MAX_HEADER_BYTES = (
    _PREFIX.size + _FIXED.size + _CHUNK.size + 4 + 32 + _MAX_NAME + _MAX_KEY_ID + _MAX_NAME
)
#: Bytes of a body that are not ciphertext are at most this.
ENVELOPE_RESERVE = 2048
_SIG_DOMAIN = b"pdmfed-sig-v2\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MSG_TYPES = frozenset(t.value for t in MsgType)

#: Header fields (everything but ciphertext and signature); all are AES-GCM associated data.
HEADER_FIELDS = (
    "security_version",
    "communication_type",
    "msg_type",
    "msg_id",
    "sender",
    "key_id",
    "timestamp",
    "datasite_id",
    "round_num",
    "nonce",
    "checksum",
    "chunk",
)
_CHUNK_FIELDS = ("update_id", "index", "total", "size", "sha256_all")
_ALL_FIELDS = frozenset(HEADER_FIELDS) | {"encrypted_data", "signature"}
_OPTIONAL = {"chunk": None, "signature": None}


def _bin(d: Mapping[str, Any], key: str, length: int) -> bytes:
    value = d[key]
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MalformedMessage(f"envelope field {key} must be bytes")
    value = bytes(value)
    if len(value) != length:
        raise MalformedMessage(f"envelope field {key} must be {length} bytes, got {len(value)}")
    return value


def _str(d: Mapping[str, Any], key: str, max_bytes: int, *, empty: bool = False) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise MalformedMessage(f"envelope field {key} must be a string")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise MalformedMessage(f"envelope field {key} is not valid UTF-8 text") from exc
    if n > max_bytes or (not empty and not n):
        raise MalformedMessage(f"envelope field {key} must be 1..{max_bytes} bytes of UTF-8")
    return value


def _int(d: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = d[key]
    if type(value) is not int or not lo <= value <= hi:
        raise MalformedMessage(f"envelope field {key} must be an integer in [{lo}, {hi}]")
    return value


def _hex64(d: Mapping[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise MalformedMessage(f"envelope field {key} must be 64 lowercase hex characters")
    return value


def validate_chunk(value: Any) -> dict[str, Any] | None:
    """Validate and normalise an envelope's chunk map (None: not a chunk; MalformedMessage)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != set(_CHUNK_FIELDS):
        raise MalformedMessage(f"envelope chunk must be a map with exactly {_CHUNK_FIELDS}")
    total = _int(value, "total", 1, MAX_CHUNKS)
    return {
        "update_id": _bin(value, "update_id", MSG_ID_LEN),
        "index": _int(value, "index", 0, total - 1),
        "total": total,
        "size": _int(value, "size", total, _MAX_SIZE),
        "sha256_all": _hex64(value, "sha256_all"),
    }


def validate_header(d: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise the header fields of an envelope map (MalformedMessage)."""
    if not isinstance(d, Mapping):
        raise MalformedMessage("envelope must be a map")
    missing = [k for k in HEADER_FIELDS if k not in d and k not in _OPTIONAL]
    if missing:
        raise MalformedMessage(f"envelope is missing fields {missing}")
    if d["security_version"] != SECURITY_VERSION:
        raise MalformedMessage(
            f"unsupported security_version {d['security_version']!r} (this build speaks"
            f" {SECURITY_VERSION})"
        )
    if d["communication_type"] != COMMUNICATION_TYPE:
        raise MalformedMessage(f"unsupported communication_type {d['communication_type']!r}")
    if not isinstance(d["msg_type"], str) or d["msg_type"] not in _MSG_TYPES:
        raise MalformedMessage(f"unknown msg_type {d['msg_type']!r}")
    timestamp = d["timestamp"]
    if type(timestamp) not in (float, int) or not math.isfinite(timestamp):
        raise MalformedMessage("envelope field timestamp must be a finite number")
    return {
        "security_version": SECURITY_VERSION,
        "communication_type": COMMUNICATION_TYPE,
        "msg_type": d["msg_type"],
        "msg_id": _bin(d, "msg_id", MSG_ID_LEN),
        "sender": _str(d, "sender", _MAX_NAME),
        "key_id": _str(d, "key_id", _MAX_KEY_ID),
        "timestamp": float(timestamp),
        "datasite_id": _str(d, "datasite_id", _MAX_NAME, empty=True),
        "round_num": _int(d, "round_num", 0, _MAX_ROUND),
        "nonce": _bin(d, "nonce", NONCE_LEN),
        "checksum": _hex64(d, "checksum"),
        "chunk": validate_chunk(d.get("chunk")),
    }


def encode_header(header: Mapping[str, Any], ct_len: int, signed: bool) -> bytes:
    """The header bytes of a body (= its AES-GCM associated data) for validated fields."""
    if not TAG_LEN <= ct_len <= _MAX_CT:
        raise OversizeMessage("ciphertext must be 16 bytes to 4 GiB")
    chunk = header.get("chunk")
    flags = (_FLAG_SIGNED if signed else 0) | (_FLAG_CHUNK if chunk is not None else 0)
    strings = [str(header[k]).encode("utf-8") for k in _STRINGS]
    parts = [
        b"",  # the prefix, once the length is known
        _FIXED.pack(
            header["msg_id"],
            header["nonce"],
            header["timestamp"],
            header["round_num"],
            bytes.fromhex(header["checksum"]),
        ),
    ]
    if chunk is not None:
        parts.append(
            _CHUNK.pack(
                chunk["update_id"],
                chunk["index"],
                chunk["total"],
                chunk["size"],
                bytes.fromhex(chunk["sha256_all"]),
            )
        )
    for raw in strings:
        parts += (bytes((len(raw),)), raw)
    header_len = _PREFIX.size + sum(len(p) for p in parts)
    parts[0] = _PREFIX.pack(WIRE_MAGIC, WIRE_VERSION, flags, header_len, ct_len)
    return b"".join(parts)


def signed_bytes_for(aad: bytes, tag: Any) -> bytes:
    """What the sender's Ed25519 key signs: the header (AAD) and the GCM tag."""
    return b"".join((_SIG_DOMAIN, aad, bytes(tag)))


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """One sealed message; ``encrypted_data`` is AES-256-GCM ciphertext with its 16-byte tag."""

    msg_type: str
    msg_id: bytes
    sender: str
    key_id: str
    timestamp: float
    nonce: bytes
    encrypted_data: bytes | bytearray | memoryview
    checksum: str
    datasite_id: str = ""
    round_num: int = 0
    signature: bytes | None = None
    chunk: dict[str, Any] | None = None
    security_version: str = SECURITY_VERSION
    communication_type: str = COMMUNICATION_TYPE
    #: Not on the wire: the claim-check reference this body was redeemed from, set by the
    #: consuming endpoint (a handler may forward the body by it, wire.claims).
    claim: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        header = validate_header({k: getattr(self, k) for k in HEADER_FIELDS})
        for key, value in header.items():
            object.__setattr__(self, key, value)
        ct = self.encrypted_data
        if not isinstance(ct, bytes | bytearray | memoryview):
            raise MalformedMessage("envelope field encrypted_data must be bytes")
        if isinstance(ct, memoryview) and (ct.ndim != 1 or ct.itemsize != 1):
            ct = ct.cast("B")
            object.__setattr__(self, "encrypted_data", ct)
        if not TAG_LEN <= len(ct) <= _MAX_CT:
            raise MalformedMessage("envelope field encrypted_data must be 16 bytes to 4 GiB")
        if self.signature is not None:
            object.__setattr__(
                self, "signature", _bin({"signature": self.signature}, "signature", SIGNATURE_LEN)
            )

    @property
    def header(self) -> dict[str, Any]:
        """The header fields (everything but ciphertext and signature)."""
        return {k: getattr(self, k) for k in HEADER_FIELDS}

    def aad(self) -> bytes:
        """The associated data this envelope was sealed with: its header bytes."""
        return encode_header(self.header, len(self.encrypted_data), self.signature is not None)

    def signed_bytes(self) -> bytes:
        """The bytes the sender's signature covers."""
        ct = self.encrypted_data
        return signed_bytes_for(self.aad(), ct[len(ct) - TAG_LEN :])

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (the seed's ``secure_package``)."""
        d = self.header
        d["encrypted_data"] = self.encrypted_data
        d["signature"] = self.signature
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Envelope:
        """Build an envelope from a map, validating every field (MalformedMessage)."""
        if not isinstance(d, Mapping):
            raise MalformedMessage("envelope must be a map")
        unknown = set(d) - _ALL_FIELDS
        if unknown:
            raise MalformedMessage(f"envelope has unknown fields {sorted(map(str, unknown))}")
        missing = [k for k in _ALL_FIELDS if k not in d and k not in _OPTIONAL]
        if missing:
            raise MalformedMessage(f"envelope is missing fields {sorted(missing)}")
        return cls(**{k: d.get(k, _OPTIONAL.get(k)) for k in _ALL_FIELDS})


def encode_envelope(env: Envelope) -> bytes:
    """Encode an envelope as a message body."""
    return b"".join((env.aad(), env.encrypted_data, env.signature or b""))


def _strings(mv: memoryview, pos: int, end: int) -> list[str]:
    out = []
    for name in _STRINGS:
        if pos >= end:
            raise MalformedMessage("envelope header is truncated")
        n = mv[pos]
        pos += 1
        if pos + n > end:
            raise MalformedMessage(f"envelope field {name} runs past the header")
        try:
            out.append(str(mv[pos : pos + n], "utf-8"))
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"envelope field {name} is not UTF-8") from exc
        pos += n
    if pos != end:
        raise MalformedMessage("envelope header has trailing bytes")
    return out


def decode_envelope(data: Any, *, max_bytes: int | None = None) -> Envelope:
    """Decode and validate a message body (MalformedMessage / OversizeMessage only).

    Reads a bounded header (at most MAX_HEADER_BYTES) and checks that the lengths it states
    add up to the body's; builds nothing whose size the sender chooses. ``encrypted_data`` of
    the result is a read-only view of ``data`` (no copy).
    """
    try:
        mv = memoryview(data).cast("B")
    except TypeError as exc:
        raise MalformedMessage(f"body must be bytes-like, not {type(data).__name__}") from exc
    size = len(mv)
    if max_bytes is not None and size > max_bytes:
        raise OversizeMessage(f"body of {size} bytes exceeds the {max_bytes}-byte limit")
    if size < _PREFIX.size:
        raise MalformedMessage("body is shorter than an envelope header")
    magic, version, flags, header_len, ct_len = _PREFIX.unpack_from(mv, 0)
    if magic != WIRE_MAGIC:
        raise MalformedMessage("body is not a pdmfed envelope (bad magic)")
    if version != WIRE_VERSION:
        raise MalformedMessage(f"unsupported envelope version {version} (this build speaks 2)")
    if flags & ~(_FLAG_SIGNED | _FLAG_CHUNK):
        raise MalformedMessage(f"envelope flags 0x{flags:02x} hold unknown bits")
    chunked = bool(flags & _FLAG_CHUNK)
    fixed_end = _PREFIX.size + _FIXED.size + (_CHUNK.size if chunked else 0)
    if not fixed_end + len(_STRINGS) <= header_len <= MAX_HEADER_BYTES:
        raise MalformedMessage(f"envelope header length {header_len} is out of bounds")
    sig_len = SIGNATURE_LEN if flags & _FLAG_SIGNED else 0
    if ct_len < TAG_LEN or header_len + ct_len + sig_len != size:
        raise MalformedMessage(
            f"envelope lengths (header {header_len}, ciphertext {ct_len}, signature {sig_len})"
            f" do not add up to the body's {size} bytes"
        )
    msg_id, nonce, timestamp, round_num, checksum = _FIXED.unpack_from(mv, _PREFIX.size)
    chunk = None
    if chunked:
        uid, index, total, csize, digest = _CHUNK.unpack_from(mv, _PREFIX.size + _FIXED.size)
        chunk = {
            "update_id": uid,
            "index": index,
            "total": total,
            "size": csize,
            "sha256_all": digest.hex(),
        }
    msg_type, sender, key_id, datasite_id = _strings(mv, fixed_end, header_len)
    mv = mv.toreadonly()
    ct_end = header_len + ct_len
    return Envelope(
        msg_type=msg_type,
        msg_id=msg_id,
        sender=sender,
        key_id=key_id,
        timestamp=timestamp,
        nonce=nonce,
        encrypted_data=mv[header_len:ct_end],
        checksum=checksum.hex(),
        datasite_id=datasite_id,
        round_num=round_num,
        signature=bytes(mv[ct_end:]) if sig_len else None,
        chunk=chunk,
    )


def binding_spans(prefix: Any, size: int) -> tuple[int, int]:
    """(header length, offset of the GCM tag) of a sealed body of ``size`` bytes, from its
    first bytes (at least the header); MalformedMessage when they describe no such body."""
    mv = memoryview(prefix).cast("B")
    if len(mv) < _PREFIX.size:
        raise MalformedMessage("body is shorter than an envelope header")
    magic, version, flags, header_len, ct_len = _PREFIX.unpack_from(mv, 0)
    sig_len = SIGNATURE_LEN if flags & _FLAG_SIGNED else 0
    if (
        magic != WIRE_MAGIC
        or version != WIRE_VERSION
        or not _PREFIX.size <= header_len <= min(len(mv), MAX_HEADER_BYTES)
        or ct_len < TAG_LEN
        or header_len + ct_len + sig_len != size
    ):
        raise MalformedMessage("bytes are not a sealed body of this size")
    return header_len, size - sig_len - TAG_LEN


def binding_digest(data: Any, *, tail: Any = None, size: int | None = None) -> str:
    """SHA-256 (hex) of what binds a sealed body: its header, GCM tag and signature.

    Names one body exactly without hashing its ciphertext: the header holds the unique msg_id
    and the SHA-256 of the plaintext, which every consumer checks after decrypting; any other
    ciphertext under this header and tag either fails the GCM tag or decrypts to a payload whose
    checksum differs. ``data`` is the whole body (validated as an envelope), or only its first
    bytes with ``tail`` (from the tag on) and ``size`` (a body read in part from a file).
    MalformedMessage when the bytes are not a sealed body.
    """
    mv = memoryview(data).cast("B")
    if tail is None:
        decode_envelope(mv)
        size = len(mv)
    header_len, tag_at = binding_spans(mv, int(size))
    h = hashlib.sha256(mv[:header_len])
    h.update(mv[tag_at:] if tail is None else memoryview(tail).cast("B"))
    return h.hexdigest()
