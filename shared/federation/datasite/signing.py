"""Factory end-to-end signatures: a datasite signs its update so no service in between can alter it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from federation.crypto.signing import SigningIdentity, TrustStore, sign_digest, verify_digest
from federation.errors import AuthError, IntegrityError, MalformedMessage
from federation.wire.codec import tensor_digest

__all__ = [
    "bound_digest",
    "sign_tensors",
    "verify_factory_result",
    "verify_update_signature",
]

_DOMAIN = b"pdmfed-factory-result-v1\x00"


def bound_digest(kind: str, tensors_digest: str, round_num: int, datasite_id: str) -> str:
    """SHA-256 hex binding a tensor digest to its kind ("delta"/"update"), round and datasite."""
    h = hashlib.sha256(_DOMAIN)
    for part in (kind, tensors_digest, str(int(round_num)), datasite_id):
        raw = part.encode("utf-8")
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.hexdigest()


def sign_tensors(
    identity: SigningIdentity, kind: str, tensors: Mapping[str, Any], round_num: int
) -> tuple[str, bytes]:
    """(tensor digest, signature) of ``tensors`` for ``round_num`` by the factory ``identity``."""
    digest = tensor_digest(tensors)
    return digest, sign_digest(identity, bound_digest(kind, digest, round_num, identity.sender))


def _trust_for(key: Any, datasite_id: str) -> TrustStore:
    if isinstance(key, TrustStore):
        return key
    if isinstance(key, Mapping):
        return TrustStore(dict(key))
    if isinstance(key, bytes | bytearray | Ed25519PublicKey):
        return TrustStore({datasite_id: key})
    raise AuthError(f"no usable public key for {datasite_id!r}: got {type(key).__name__}")


def _check(
    trust: TrustStore, kind: str, tensors: Any, claimed: Any, signature: Any, rnd: int, ds: str
) -> None:
    if not isinstance(tensors, Mapping):
        raise MalformedMessage(f"{kind} is missing or not a state dict")
    digest = tensor_digest(tensors)
    if claimed is not None and claimed != digest:
        raise IntegrityError(f"{kind} digest does not match its tensors (altered in transit)")
    verify_digest(trust, ds, bound_digest(kind, digest, rnd, ds), signature)


def _ids(result: Mapping[str, Any]) -> tuple[str, int]:
    ds = result.get("datasite_id")
    rnd = result.get("round_number", result.get("round_num"))
    if not isinstance(ds, str) or not isinstance(rnd, int) or isinstance(rnd, bool):
        raise MalformedMessage("result lacks datasite_id (str) and round_number (int)")
    signer = result.get("factory_key_id") or ds
    if signer != ds:
        raise AuthError(f"update of {ds!r} is signed by another factory ({signer!r})")
    return ds, rnd


def verify_factory_result(result: Mapping[str, Any], trust_store_or_public_key: Any) -> bool:
    """True when the factory signed this training result; AuthError/IntegrityError otherwise.

    Checks ``factory_signature`` over the delta and ``update_signature`` over the
    model_update, each bound to the round and datasite id.
    """
    if not isinstance(result, Mapping):
        raise MalformedMessage("a training result must be a mapping")
    ds, rnd = _ids(result)
    trust = _trust_for(trust_store_or_public_key, ds)
    _check(
        trust,
        "update",
        result.get("model_update"),
        result.get("update_digest"),
        result.get("update_signature"),
        rnd,
        ds,
    )
    if "delta" in result or "factory_signature" in result:
        _check(
            trust,
            "delta",
            result.get("delta"),
            result.get("delta_digest"),
            result.get("factory_signature"),
            rnd,
            ds,
        )
    return True


def verify_update_signature(payload: Mapping[str, Any], trust: Any) -> None:
    """Check an update.raw payload's ``factory_signature`` over its delta (AuthError if not)."""
    if not isinstance(payload, Mapping):
        raise MalformedMessage("update payload must be a mapping")
    ds, rnd = _ids(payload)
    _check(
        _trust_for(trust, ds),
        "delta",
        payload.get("delta"),
        None,
        payload.get("factory_signature"),
        rnd,
        ds,
    )
