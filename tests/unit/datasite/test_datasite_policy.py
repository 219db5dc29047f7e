"""The allow-list approval policy: the whole request's hash decides, the function's name does not."""

from __future__ import annotations

import dataclasses

import pytest
from federation.datasite.policy import (
    EXACT_MATCH,
    EXECUTE_ONCE,
    UPLOAD,
    ApprovalPolicy,
    RequestPieces,
    approved_job_hashes,
    asset_binding,
    code_hash,
    request_hash,
    training_request,
)
from federation.errors import ConfigError

APPROVED = "def job_a(x, y):\n    from m import run\n\n    return run(x, y)\n"
PIECES = RequestPieces(
    code=APPROVED,
    input_policy=EXACT_MATCH,
    bindings={"x": asset_binding("pdm_partition", "features"), "y": UPLOAD},
    output_policy=EXECUTE_ONCE,
)


def test_when_only_the_function_name_differs__the_hash_is_the_same():
    renamed = APPROVED.replace("def job_a(", "def pdmfed_train_r7_0a1b2c(")
    assert code_hash(renamed) == code_hash(APPROVED)
    assert dataclasses.replace(PIECES, code=renamed).digest() == PIECES.digest()


def test_when_the_body_differs_by_one_character__the_hash_differs():
    altered = APPROVED.replace("run(x, y)", "run(y, x)")
    assert dataclasses.replace(PIECES, code=altered).digest() != PIECES.digest()


@pytest.mark.parametrize(
    "change",
    [
        {"output_policy": "syft.service.policy.policy.OutputPolicyExecuteCount"},
        {"output_settings": {"limit": 1000}},
        {"input_policy": "syft.service.policy.policy.MixedInputPolicy"},
        {"bindings": {"x": asset_binding("pdm_partition", "labels"), "y": UPLOAD}},
        {
            "bindings": {
                "x": asset_binding("pdm_partition", "features"),
                "y": asset_binding("pdm_partition", "labels"),
            }
        },
        {"bindings": {"x": asset_binding("pdm_partition", "features")}},
        {"uses_datasite": True},
        {"nested_codes": ("helper",)},
    ],
)
def test_when_any_piece_besides_the_code_is_wider__the_hash_differs(change):
    assert dataclasses.replace(PIECES, **change).digest() != PIECES.digest()


def test_when_the_output_policy_has_its_own_fresh_id__the_hash_ignores_it():
    assert dataclasses.replace(PIECES, output_settings={"id": "7f3a"}).digest() == PIECES.digest()


def test_the_request_hash_function_takes_the_pieces_directly():
    assert (
        request_hash(
            APPROVED, input_policy=EXACT_MATCH, bindings=PIECES.bindings, output_policy=EXECUTE_ONCE
        )
        == PIECES.digest()
    )


def test_when_the_request_is_allow_listed__the_policy_approves_it():
    decision = ApprovalPolicy([PIECES.digest()]).decide(PIECES)
    assert decision.approve and decision.request_hash == PIECES.digest()


def test_when_the_request_is_not_allow_listed__the_policy_leaves_it_pending_with_a_reason():
    wider = dataclasses.replace(PIECES, output_settings={"limit": 10})
    decision = ApprovalPolicy([PIECES.digest()]).decide(wider)
    assert not decision.approve and "not on the allow-list" in decision.reason


def test_when_the_request_is_unreadable__the_policy_refuses_instead_of_crashing():
    assert not ApprovalPolicy([PIECES.digest()]).decide(None).approve
    broken = dataclasses.replace(PIECES, code=None)  # type: ignore[arg-type]
    decision = ApprovalPolicy([PIECES.digest()]).decide(broken)
    assert not decision.approve and decision.request_hash == ""


@pytest.mark.parametrize("entry", ["abc", "z" * 64, 42])
def test_when_an_allow_list_entry_is_not_a_sha256__construction_fails(entry):
    with pytest.raises(ConfigError):
        ApprovalPolicy([entry])


def test_when_shipped__the_training_and_statistics_request_hashes_are_the_default_allow_list():
    from federation.datasite.policy import stats_request

    pieces = training_request()
    assert approved_job_hashes() == {pieces.digest(), stats_request().digest()}
    assert stats_request().bindings == {
        "features": "asset:pdm_partition/features",
        "stats_config": "upload",
    }
    assert pieces.bindings["global_model"] == UPLOAD and pieces.output_policy == EXECUTE_ONCE
