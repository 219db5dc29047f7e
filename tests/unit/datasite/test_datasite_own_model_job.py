"""The job for an own model: pinned by its code (entry point + source digest), checked at run time."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from federation.crypto.signing import SigningIdentity
from federation.datasite.job import (
    ENV_DATASITE_ID,
    ENV_KEYS_DIR,
    model_training_job,
    run_training_job,
)
from federation.datasite.policy import ApprovalPolicy, approved_job_hashes, training_request
from federation.ml.models import build_model
from federation.ml.own_model import package_digest, source_digest
from federation.wire.codec import decode_state_dict, encode_payload, encode_state_dict

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tcn_rul"
TCN = "tcn_rul.model:build"
DS = "chemical_houston_reactor"


@pytest.fixture(autouse=True)
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


@pytest.fixture()
def factory(tmp_path, monkeypatch) -> SigningIdentity:
    identity = SigningIdentity.load_or_create(tmp_path, DS)
    monkeypatch.setenv(ENV_DATASITE_ID, DS)
    monkeypatch.setenv(ENV_KEYS_DIR, str(tmp_path))
    return identity


def _inputs(model_type: str = TCN):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((16, 6, 3)).astype(np.float32)
    y = (60 + 10 * X[:, -1, 0]).astype(np.float32)
    torch.manual_seed(0)
    state = build_model(model_type, 3, 6).state_dict()
    return X, y, encode_state_dict(state)


def _cfg(**extra):
    return encode_payload({"epochs": 1, "batch_size": 8, "round_number": 1, "seed": 3, **extra})


def test_the_approved_job_trains_the_model_its_code_names(factory):
    X, y, model = _inputs()
    threads = torch.get_num_threads()
    try:
        out = model_training_job(TCN)(X, y, model, _cfg(model_type=TCN))
        implicit = run_training_job(X, y, model, _cfg(), model=(TCN, source_digest(TCN)))
    finally:
        torch.set_num_threads(threads)
    assert "error" not in out, out.get("error")
    assert set(decode_state_dict(out["model_update"])) == set(decode_state_dict(model))
    assert "error" not in implicit, implicit.get("error")  # the config may leave the model out


def test_a_config_naming_another_model_than_the_approved_job_is_refused(factory):
    X, y, model = _inputs("cnn")
    out = model_training_job(TCN)(X, y, model, _cfg(model_type="cnn"))
    assert "names model 'cnn' but the approved job is for 'tcn_rul.model:build'" in out["error"]


def test_the_built_in_job_trains_no_own_model_even_if_the_config_names_one(factory):
    X, y, model = _inputs()
    out = run_training_job(X, y, model, _cfg(model_type=TCN))
    assert "the approved job names no own model" in out["error"]


def test_an_installed_source_that_is_not_the_approved_one_is_refused_at_run_time(factory):
    X, y, model = _inputs()
    out = run_training_job(X, y, model, _cfg(model_type=TCN), model=(TCN, "0" * 64))
    assert "is not the approved one (000000000000): approve it again" in out["error"]


def test_a_changed_model_source_is_another_request_hash_left_pending(tmp_path):
    approved = approved_job_hashes([TCN])
    assert approved > approved_job_hashes()  # the built-in job plus the model's
    policy = ApprovalPolicy(approved)
    assert policy.decide(training_request(model=TCN)).approve
    copy = tmp_path / "tcn_rul"
    shutil.copytree(EXAMPLE / "tcn_rul", copy)
    (copy / "model.py").write_text((copy / "model.py").read_text() + "\n# retuned\n")
    changed = training_request(model_training_job(TCN, package_digest(copy)))
    decision = policy.decide(changed)
    assert not decision.approve and "not on the allow-list" in decision.reason
    # the built-in job's allow-list does not approve the model either
    assert not ApprovalPolicy(approved_job_hashes()).decide(training_request(model=TCN)).approve
