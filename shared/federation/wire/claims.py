"""Claim-check references: a message that carries the name and digest of its sealed body.

A producer with a shared claim store seals a large payload once into a file every service can
read (:mod:`~federation.runtime.claims`) and publishes a small message of the same type whose
payload is only ``{"claim_check": {"ref", "sha256", "size"}}``. Which message types may travel
this way is declared by their contract (``by_reference`` in :mod:`~federation.wire.contracts`).

A type whose contract ``forwards`` another may name a body of that other type, sealed by its
sender, and add only its own fields: ``{"claim_check": {...}, "forwarded": {field: value}}``
(security passes a connector's update on unchanged with its verdict, without sealing and
writing the update's bytes again).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from typing import Any

from federation.errors import MalformedMessage

__all__ = [
    "CLAIM_KEY",
    "FORWARD_KEY",
    "ClaimReference",
    "forwarded_fields",
    "forwarded_id",
    "merge_forwarded",
]

#: The key of a reference payload naming the body.
CLAIM_KEY = "claim_check"
#: The key of a forwarding reference's own fields (the only other key a reference may have).
FORWARD_KEY = "forwarded"
#: ``<producer>/<32 hex>``: the producing service's folder and a random file name (no paths).
_REF = re.compile(r"^[a-z][a-z0-9_-]{0,62}/[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ClaimReference:
    """Where a sealed body is (``ref``), its binding digest (hex SHA-256 of its header, tag and
    signature: :func:`~federation.wire.envelope.binding_digest`) and its size in bytes."""

    ref: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.ref, str) or not _REF.match(self.ref):
            raise MalformedMessage(f"claim_check.ref {self.ref!r} is not <producer>/<32 hex>")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise MalformedMessage("claim_check.sha256 is not 64 lowercase hex digits")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise MalformedMessage("claim_check.size is not a positive integer")

    @property
    def producer(self) -> str:
        """The folder of the service that sealed the body."""
        return self.ref.split("/", 1)[0]

    @property
    def name(self) -> str:
        """The body's file name in its producer's folder."""
        return self.ref.split("/", 1)[1]

    def to_payload(self, forwarded: dict[str, Any] | None = None) -> dict[str, Any]:
        """The reference payload; with ``forwarded``, a forwarding reference's own fields."""
        out: dict[str, Any] = {
            CLAIM_KEY: {"ref": self.ref, "sha256": self.sha256, "size": self.size}
        }
        if forwarded is not None:
            out[FORWARD_KEY] = dict(forwarded)
        return out

    @classmethod
    def from_payload(cls, payload: Any) -> ClaimReference | None:
        """The reference a payload is, None when it is an ordinary payload; MalformedMessage
        for a payload that names ``claim_check`` but is not exactly a valid reference."""
        if not isinstance(payload, dict) or CLAIM_KEY not in payload:
            return None
        body = payload[CLAIM_KEY]
        if (
            not set(payload) <= {CLAIM_KEY, FORWARD_KEY}
            or not isinstance(body, dict)
            or set(body) != {"ref", "sha256", "size"}
        ):
            raise MalformedMessage(
                "a claim_check payload is exactly {claim_check: {ref, sha256, size}}"
                " (and, forwarding, {forwarded: {...}})"
            )
        forwarded_fields(payload)
        return cls(body["ref"], body["sha256"], body["size"])


def forwarded_fields(payload: Any) -> dict[str, Any] | None:
    """A forwarding reference's own fields, None for a plain reference or other payload;
    MalformedMessage when they are not a map of field names."""
    if not isinstance(payload, dict) or FORWARD_KEY not in payload:
        return None
    fields = payload[FORWARD_KEY]
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
        raise MalformedMessage("claim_check forwarded fields must be a map of field names")
    return fields


def merge_forwarded(msg_type: str, body: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """The payload of a forwarding ``msg_type``: the forwarded body's fields that ``msg_type``
    has, then its own fields, which must be ones the body's type lacks (a forwarder adds a
    verdict; it never overrides what the body's sender signed). MalformedMessage otherwise."""
    from federation.wire.contracts import forwarded_type
    from federation.wire.messages import MESSAGE_CLASSES, MsgType

    source = forwarded_type(msg_type)
    if source is None:
        raise MalformedMessage(f"{msg_type} forwards no other type's body")
    target = {f.name for f in fields(MESSAGE_CLASSES[MsgType(msg_type)])}
    inherited = {f.name for f in fields(MESSAGE_CLASSES[source])}
    extra = set(own) - (target - inherited)
    if extra:
        raise MalformedMessage(
            f"{msg_type} forwarding {source.value} may add only its own fields, not {sorted(extra)}"
        )
    return {**{k: v for k, v in body.items() if k in target}, **own}


def forwarded_id(body_msg_id: bytes) -> bytes:
    """The message id a consumer handles a forwarded body under: derived from the body's own
    id (the same however often it is forwarded), distinct from it (never the sender's message)."""
    return hashlib.sha256(b"pdmfed-forwarded\x00" + bytes(body_msg_id)).digest()[: len(body_msg_id)]
