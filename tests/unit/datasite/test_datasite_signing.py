"""Factory signatures: bound to tensors, round and datasite; any alteration is caught."""

from __future__ import annotations

import pytest
import torch
from federation.crypto.signing import SigningIdentity, TrustStore
from federation.datasite.signing import sign_tensors, verify_factory_result, verify_update_signature
from federation.errors import AuthError, IntegrityError, MalformedMessage

DS = "automotive_detroit_main"


@pytest.fixture()
def identity() -> SigningIdentity:
    return SigningIdentity.generate(DS)


def _result(identity: SigningIdentity, rnd: int = 4) -> dict:
    update = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    delta = {k: v * 0.1 for k, v in update.items()}
    bound = {"campaign_id": "c1", "model_version": 2}
    ud, us = sign_tensors(identity, "update", update, rnd, **bound)
    dd, dsig = sign_tensors(identity, "delta", delta, rnd, **bound)
    return {"datasite_id": DS, "round_number": rnd, "model_update": update, "delta": delta, **bound,
            "update_digest": ud, "delta_digest": dd, "update_signature": us,
            "factory_signature": dsig, "factory_key_id": DS}  # fmt: skip


def test_when_nothing_was_altered__the_result_verifies_with_key_bytes_or_trust_store(identity):
    result = _result(identity)
    assert verify_factory_result(result, identity.public_bytes())
    assert verify_factory_result(result, TrustStore({DS: identity.public_bytes()}))


def test_when_the_update_is_altered__the_digest_check_fails(identity):
    result = _result(identity)
    result["model_update"] = {**result["model_update"], "b": torch.zeros(3)}
    with pytest.raises(IntegrityError):
        verify_factory_result(result, identity.public_bytes())


def test_when_the_delta_and_its_digest_are_both_replaced__the_signature_fails(identity):
    from federation.wire.codec import tensor_digest

    result = _result(identity)
    result["delta"] = {k: v * 2 for k, v in result["delta"].items()}
    result["delta_digest"] = tensor_digest(result["delta"])
    with pytest.raises(AuthError):
        verify_factory_result(result, identity.public_bytes())


def test_when_another_factory_key_is_used__verification_fails(identity):
    other = SigningIdentity.generate(DS)
    with pytest.raises(AuthError):
        verify_factory_result(_result(identity), other.public_bytes())


def test_when_an_update_raw_payload_moves_to_another_round_or_site__verification_fails(identity):
    r = _result(identity)
    trust = {DS: identity.public_bytes()}
    payload = {"datasite_id": DS, "round_num": 4, "delta": r["delta"], "campaign_id": "c1", "model_version": 2,
               "factory_signature": r["factory_signature"], "factory_key_id": DS}  # fmt: skip
    verify_update_signature(payload, trust)
    with pytest.raises(AuthError):
        verify_update_signature({**payload, "round_num": 5}, trust)
    with pytest.raises(AuthError):
        verify_update_signature({**payload, "campaign_id": "c2"}, trust)
    with pytest.raises(AuthError):
        verify_update_signature({**payload, "model_version": 1}, trust)
    with pytest.raises(AuthError):
        verify_update_signature({**payload, "factory_key_id": "other_site"}, trust)
    with pytest.raises(AuthError):
        verify_update_signature({**payload, "factory_signature": None}, trust)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        {"datasite_id": DS},
        {"datasite_id": 3, "round_num": 1},
        {"datasite_id": DS, "round_num": 1, "campaign_id": 7},
        {"datasite_id": DS, "round_num": 1, "model_version": "2"},
    ],
)
def test_when_the_payload_is_malformed__a_typed_error_is_raised(bad, identity):
    with pytest.raises(MalformedMessage):
        verify_update_signature(bad, {DS: identity.public_bytes()})
