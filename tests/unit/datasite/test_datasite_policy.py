"""The allow-list approval policy: a code hash decides, the function's name does not."""

from __future__ import annotations

import pytest
from federation.datasite.job import pdmfed_train_job
from federation.datasite.policy import ApprovalPolicy, approved_job_hashes, code_hash, job_code_hash
from federation.errors import ConfigError

APPROVED = "def job_a(x, y):\n    from m import run\n\n    return run(x, y)\n"


def test_when_only_the_function_name_differs__the_hash_is_the_same():
    renamed = APPROVED.replace("def job_a(", "def pdmfed_train_r7_0a1b2c(")
    assert code_hash(renamed) == code_hash(APPROVED)


def test_when_the_body_differs_by_one_character__the_hash_differs():
    altered = APPROVED.replace("run(x, y)", "run(y, x)")
    assert code_hash(altered) != code_hash(APPROVED)


def test_when_code_is_allow_listed__the_policy_approves_it():
    decision = ApprovalPolicy([code_hash(APPROVED)]).decide(APPROVED)
    assert decision.approve and decision.code_hash == code_hash(APPROVED)


def test_when_code_is_not_allow_listed__the_policy_leaves_it_pending_with_a_reason():
    decision = ApprovalPolicy([code_hash(APPROVED)]).decide(APPROVED + "    # extra\n")
    assert not decision.approve and "not on the allow-list" in decision.reason


def test_when_the_code_is_not_text__the_policy_refuses_instead_of_crashing():
    decision = ApprovalPolicy([code_hash(APPROVED)]).decide(None)  # type: ignore[arg-type]
    assert not decision.approve and decision.code_hash == ""


@pytest.mark.parametrize("entry", ["abc", "z" * 64, 42])
def test_when_an_allow_list_entry_is_not_a_sha256__construction_fails(entry):
    with pytest.raises(ConfigError):
        ApprovalPolicy([entry])


def test_when_shipped__the_training_job_hash_is_the_default_allow_list():
    assert approved_job_hashes() == {job_code_hash(pdmfed_train_job)}
