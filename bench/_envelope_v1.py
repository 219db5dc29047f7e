"""The envelope v1 decoder as it was before envelope v2: the "before" of bench_hostile only.

Kept verbatim (decoding and validation; encoders dropped) so the hostile-input benchmark
measures the old refusal cost side by side with the current one. Production code never
imports this module: it has exactly one envelope implementation, ``federation.wire.envelope``.
v1 read a whole msgpack map in pure Python, building every object, before any check.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from federation.errors import MalformedMessage, OversizeMessage
from federation.wire.messages import MsgType

__all__ = ["decode_envelope_v1"]

SECURITY_VERSION = "1.0"
COMMUNICATION_TYPE = "secure"
MSG_ID_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
SIGNATURE_LEN = 64
#: Bytes of a body that are not ciphertext are at most this (with the field limits below).
ENVELOPE_RESERVE = 2048
MAX_CHUNKS = 65536
_MAX_NAME = 256
_MAX_KEY_ID = 64
_MAX_DEPTH = 3
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MSG_TYPES = frozenset(t.value for t in MsgType)

#: Header fields, in wire order; all of them are AES-GCM associated data.
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


def _bin(d: Mapping[str, Any], key: str, length: int | None = None) -> bytes:
    value = d[key]
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MalformedMessage(f"envelope field {key} must be bytes")
    value = bytes(value)
    if length is not None and len(value) != length:
        raise MalformedMessage(f"envelope field {key} must be {length} bytes, got {len(value)}")
    return value


def _str(d: Mapping[str, Any], key: str, max_len: int, *, empty: bool = False) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise MalformedMessage(f"envelope field {key} must be a string")
    if len(value) > max_len or (not empty and not value):
        raise MalformedMessage(f"envelope field {key} must be 1..{max_len} characters")
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


def _chunk(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != set(_CHUNK_FIELDS):
        raise MalformedMessage(f"envelope chunk must be a map with exactly {_CHUNK_FIELDS}")
    total = _int(value, "total", 1, MAX_CHUNKS)
    chunk = {
        "update_id": _bin(value, "update_id", MSG_ID_LEN),
        "index": _int(value, "index", 0, total - 1),
        "total": total,
        "size": _int(value, "size", total, 2**48),
        "sha256_all": _hex64(value, "sha256_all"),
    }
    return chunk


def validate_header(d: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise the header fields of an envelope map (MalformedMessage)."""
    if not isinstance(d, Mapping):
        raise MalformedMessage("envelope must be a map")
    missing = [k for k in HEADER_FIELDS if k not in d and k not in _OPTIONAL]
    if missing:
        raise MalformedMessage(f"envelope is missing fields {missing}")
    if d["security_version"] != SECURITY_VERSION:
        raise MalformedMessage(f"unsupported security_version {d['security_version']!r}")
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
        "round_num": _int(d, "round_num", 0, 2**63 - 1),
        "nonce": _bin(d, "nonce", NONCE_LEN),
        "checksum": _hex64(d, "checksum"),
        "chunk": _chunk(d.get("chunk")),
    }


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
        if len(ct) < TAG_LEN:
            raise MalformedMessage("envelope field encrypted_data is shorter than a GCM tag")
        if self.signature is not None:
            object.__setattr__(
                self, "signature", _bin({"signature": self.signature}, "signature", SIGNATURE_LEN)
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Envelope:
        """Build an envelope from a map, validating every field (MalformedMessage)."""
        if not isinstance(d, Mapping):
            raise MalformedMessage("envelope must be a map")
        unknown = set(d) - _ALL_FIELDS
        if unknown:
            raise MalformedMessage(f"envelope has unknown fields {sorted(map(str, unknown))}")
        if "encrypted_data" not in d:
            raise MalformedMessage("envelope is missing fields ['encrypted_data']")
        fields = {k: d.get(k, _OPTIONAL.get(k)) for k in _ALL_FIELDS}
        missing = [k for k in _ALL_FIELDS if k not in d and k not in _OPTIONAL]
        if missing:
            raise MalformedMessage(f"envelope is missing fields {sorted(missing)}")
        return cls(**fields)


_SIMPLE = {0xC0: None, 0xC2: False, 0xC3: True}


class _Reader:
    """A strict msgpack reader for envelopes: bins come back as zero-copy memoryviews."""

    __slots__ = ("mv", "pos")

    def __init__(self, mv: memoryview) -> None:
        self.mv = mv
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.mv):
            raise MalformedMessage("envelope is truncated")
        out = self.mv[self.pos : end]
        self.pos = end
        return out

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "big")

    def _sint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "big", signed=True)

    def _str(self, n: int) -> str:
        try:
            return str(self._take(n), "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("envelope holds a string that is not UTF-8") from exc

    def read(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise MalformedMessage("envelope is nested too deeply")
        pos = self.pos
        if pos >= len(self.mv):
            raise MalformedMessage("envelope is truncated")
        b = self.mv[pos]
        self.pos = pos + 1
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        if 0x80 <= b <= 0x8F:
            return self._map(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self._array(b & 0x0F, depth)
        if b in _SIMPLE:
            return _SIMPLE[b]
        if b in (0xC4, 0xC5, 0xC6):
            return self._take(self._uint(1 << (b - 0xC4)))
        if b in (0xD9, 0xDA, 0xDB):
            return self._str(self._uint(1 << (b - 0xD9)))
        if 0xCC <= b <= 0xCF:
            return self._uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            return self._sint(1 << (b - 0xD0))
        if b == 0xCA:
            return struct.unpack(">f", self._take(4))[0]
        if b == 0xCB:
            return struct.unpack(">d", self._take(8))[0]
        if b in (0xDE, 0xDF):
            return self._map(self._uint(2 if b == 0xDE else 4), depth)
        if b in (0xDC, 0xDD):
            return self._array(self._uint(2 if b == 0xDC else 4), depth)
        raise MalformedMessage(f"envelope holds an unsupported msgpack type 0x{b:02x}")

    def _map(self, n: int, depth: int) -> dict[Any, Any]:
        if n > len(self.mv) - self.pos:
            raise MalformedMessage("envelope map is longer than the body")
        out: dict[Any, Any] = {}
        for _ in range(n):
            key = self.read(depth + 1)
            if not isinstance(key, str):
                raise MalformedMessage("envelope map keys must be strings")
            if key in out:
                raise MalformedMessage(f"envelope repeats field {key}")
            out[key] = self.read(depth + 1)
        return out

    def _array(self, n: int, depth: int) -> list[Any]:
        if n > len(self.mv) - self.pos:
            raise MalformedMessage("envelope array is longer than the body")
        return [self.read(depth + 1) for _ in range(n)]


def decode_envelope_v1(data: Any, *, max_bytes: int | None = None) -> Envelope:
    """Decode and validate a message body (MalformedMessage / OversizeMessage only).

    ``encrypted_data`` of the result is a read-only view of ``data`` (no copy).
    """
    try:
        mv = memoryview(data).cast("B")
    except TypeError as exc:
        raise MalformedMessage(f"body must be bytes-like, not {type(data).__name__}") from exc
    if max_bytes is not None and len(mv) > max_bytes:
        raise OversizeMessage(f"body of {len(mv)} bytes exceeds the {max_bytes}-byte limit")
    mv = mv.toreadonly()
    reader = _Reader(mv)
    top = reader.read()
    if not isinstance(top, dict):
        raise MalformedMessage("envelope must be a msgpack map")
    if reader.pos != len(mv):
        raise MalformedMessage("envelope has trailing bytes")
    return Envelope.from_dict(top)
