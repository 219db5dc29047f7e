"""Claim-check references: a message that carries the name and digest of its sealed body.

A producer with a shared claim store seals a large payload once into a file every service can
read (:mod:`~federation.runtime.claims`) and publishes a small message of the same type whose
payload is only ``{"claim_check": {"ref", "sha256", "size"}}``. Which message types may travel
this way is declared by their contract (``by_reference`` in :mod:`~federation.wire.contracts`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from federation.errors import MalformedMessage

__all__ = ["CLAIM_KEY", "ClaimReference"]

#: The only key of a reference payload.
CLAIM_KEY = "claim_check"
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

    def to_payload(self) -> dict[str, Any]:
        return {CLAIM_KEY: {"ref": self.ref, "sha256": self.sha256, "size": self.size}}

    @classmethod
    def from_payload(cls, payload: Any) -> ClaimReference | None:
        """The reference a payload is, None when it is an ordinary payload; MalformedMessage
        for a payload that names ``claim_check`` but is not exactly a valid reference."""
        if not isinstance(payload, dict) or CLAIM_KEY not in payload:
            return None
        body = payload[CLAIM_KEY]
        if (
            len(payload) != 1
            or not isinstance(body, dict)
            or set(body) != {"ref", "sha256", "size"}
        ):
            raise MalformedMessage(
                "a claim_check payload is exactly {claim_check: {ref, sha256, size}}"
            )
        return cls(body["ref"], body["sha256"], body["size"])
