"""Factory end-to-end signatures: a datasite signs its update so no service in between can alter it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from federation.crypto.signing import SigningIdentity, TrustStore, sign_digest, verify_digest
from federation.errors import AuthError, IntegrityError, MalformedMessage
from federation.wire.codec import tensor_digest

__all__ = [
    "bound_digest",
    "sign_stats",
    "sign_tensors",
    "stats_digest",
    "verify_factory_result",
    "verify_stats_signature",
    "verify_update_signature",
]

_DOMAIN = b"pdmfed-factory-result-v2\x00"


def bound_digest(
    kind: str,
    tensors_digest: str,
    round_num: int,
    datasite_id: str,
    campaign_id: str,
    model_version: int,
) -> str:
    """SHA-256 hex binding a tensor digest to its kind ("delta"/"update"), round, datasite,
    campaign and the version of the global model it was trained from: a signed delta cannot be
    moved to another round, campaign or base model."""
    h = hashlib.sha256(_DOMAIN)
    parts = (kind, tensors_digest, str(int(round_num)), datasite_id, campaign_id,
             str(int(model_version)))  # fmt: skip
    for part in parts:
        raw = part.encode("utf-8")
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.hexdigest()


def sign_tensors(
    identity: SigningIdentity,
    kind: str,
    tensors: Mapping[str, Any],
    round_num: int,
    *,
    campaign_id: str,
    model_version: int,
) -> tuple[str, bytes]:
    """(tensor digest, signature) of ``tensors`` for this round, campaign and base model."""
    digest = tensor_digest(tensors)
    bound = bound_digest(kind, digest, round_num, identity.sender, campaign_id, model_version)
    return digest, sign_digest(identity, bound)


def _trust_for(key: Any, datasite_id: str) -> TrustStore:
    if isinstance(key, TrustStore):
        return key
    if isinstance(key, Mapping):
        return TrustStore(dict(key))
    if isinstance(key, bytes | bytearray | Ed25519PublicKey):
        return TrustStore({datasite_id: key})
    raise AuthError(f"no usable public key for {datasite_id!r}: got {type(key).__name__}")


@dataclass(frozen=True)
class _Binding:
    """What a factory's signature binds besides the tensors."""

    datasite_id: str
    round_num: int
    campaign_id: str
    model_version: int


def _check(
    trust: TrustStore, kind: str, tensors: Any, claimed: Any, signature: Any, b: _Binding
) -> None:
    if not isinstance(tensors, Mapping):
        raise MalformedMessage(f"{kind} is missing or not a state dict")
    digest = tensor_digest(tensors)
    if claimed is not None and claimed != digest:
        raise IntegrityError(f"{kind} digest does not match its tensors (altered in transit)")
    bound = bound_digest(kind, digest, b.round_num, b.datasite_id, b.campaign_id, b.model_version)
    verify_digest(trust, b.datasite_id, bound, signature)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _binding(result: Mapping[str, Any]) -> _Binding:
    ds = result.get("datasite_id")
    rnd = result.get("round_number", result.get("round_num"))
    cid = result.get("campaign_id", "")
    version = result.get("model_version", 0)
    if not isinstance(ds, str) or not _int(rnd):
        raise MalformedMessage("result lacks datasite_id (str) and round_number (int)")
    if not isinstance(cid, str) or not _int(version):
        raise MalformedMessage("result's campaign_id must be a str and model_version an int")
    signer = result.get("factory_key_id") or ds
    if signer != ds:
        raise AuthError(f"update of {ds!r} is signed by another factory ({signer!r})")
    return _Binding(ds, rnd, cid, version)


def verify_factory_result(result: Mapping[str, Any], trust_store_or_public_key: Any) -> bool:
    """True when the factory signed this training result; AuthError/IntegrityError otherwise.

    Checks ``factory_signature`` over the delta and ``update_signature`` over the
    model_update, each bound to the round, datasite, campaign and base model version.
    """
    if not isinstance(result, Mapping):
        raise MalformedMessage("a training result must be a mapping")
    binding = _binding(result)
    trust = _trust_for(trust_store_or_public_key, binding.datasite_id)
    _check(
        trust,
        "update",
        result.get("model_update"),
        result.get("update_digest"),
        result.get("update_signature"),
        binding,
    )
    if "delta" in result or "factory_signature" in result:
        _check(
            trust,
            "delta",
            result.get("delta"),
            result.get("delta_digest"),
            result.get("factory_signature"),
            binding,
        )
    return True


def verify_update_signature(payload: Mapping[str, Any], trust: Any) -> None:
    """Check an update.raw payload's ``factory_signature`` over its delta, bound to the payload's
    campaign_id, model_version, round_num and datasite_id (AuthError if not)."""
    if not isinstance(payload, Mapping):
        raise MalformedMessage("update payload must be a mapping")
    binding = _binding(payload)
    _check(
        _trust_for(trust, binding.datasite_id),
        "delta",
        payload.get("delta"),
        None,
        payload.get("factory_signature"),
        binding,
    )


#: Round 0 of a campaign: statistics are signed for round 0 and base model version 0.
_STATS_KIND, _STATS_ROUND, _STATS_VERSION = "stats", 0, 0


def stats_digest(stats: Any) -> str:
    """SHA-256 hex of a statistics map in canonical JSON (sorted keys, no spaces)."""
    try:
        text = json.dumps(stats, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"statistics are not a plain JSON map: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sign_stats(identity: SigningIdentity, stats: Mapping[str, Any], *, campaign_id: str) -> bytes:
    """The factory's signature over its round-0 statistics, bound to itself and the campaign."""
    bound = bound_digest(_STATS_KIND, stats_digest(stats), _STATS_ROUND, identity.sender,
                         campaign_id, _STATS_VERSION)  # fmt: skip
    return sign_digest(identity, bound)


def verify_stats_signature(payload: Mapping[str, Any], trust: Any) -> None:
    """Check a stats payload's ``stats_signature`` by its datasite for its campaign (AuthError)."""
    if not isinstance(payload, Mapping):
        raise MalformedMessage("statistics payload must be a mapping")
    ds, cid = payload.get("datasite_id"), payload.get("campaign_id")
    if not isinstance(ds, str) or not isinstance(cid, str):
        raise MalformedMessage("statistics lack datasite_id and campaign_id (str)")
    signer = payload.get("factory_key_id") or ds
    if signer != ds:
        raise AuthError(f"statistics of {ds!r} are signed by another factory ({signer!r})")
    bound = bound_digest(_STATS_KIND, stats_digest(payload.get("stats")), _STATS_ROUND, ds, cid,
                         _STATS_VERSION)  # fmt: skip
    verify_digest(_trust_for(trust, ds), ds, bound, payload.get("stats_signature"))
