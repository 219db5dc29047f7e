"""An own model (examples/tcn_rul) federated over two real PySyft datasites that approved it."""

from __future__ import annotations

import secrets
import shutil
import sys
from pathlib import Path

import pytest
import torch
from datasite_helpers import N_FEATURES, ORCH_EMAIL, WINDOW, tiny_partition
from federation.communication import PySyftCommunicationManager
from federation.datasite import launch_datasite, verify_factory_result
from federation.datasite.job import model_training_job
from federation.datasite.policy import training_request
from federation.ml.models import build_model
from federation.ml.own_model import package_digest, source_digest
from federation.ml.train import evaluate, fedavg

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tcn_rul"
# the factories have the model package available locally (their datasite processes fork from here)
sys.path.insert(0, str(EXAMPLE))
TCN = "tcn_rul.model:build"
SITES = ("automotive_detroit_main", "chemical_houston_reactor")
CONFIG = {
    "model_type": TCN,
    "epochs": 2,
    "learning_rate": 0.01,
    "batch_size": 16,
    "dp": {"noise_multiplier": 0.8, "max_grad_norm": 1.0, "delta": 1e-5},
}


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    """Two datasites whose factories approved tcn_rul.model:build at their installed source."""
    keys = tmp_path_factory.mktemp("factory-keys")
    password = secrets.token_urlsafe(16)
    handles, parts = {}, {}
    try:
        for i, ds in enumerate(SITES):
            parts[ds] = tiny_partition(seed=200 + i, n=64)
            handles[ds] = launch_datasite(
                ds,
                0,
                parts[ds],
                admin_password=secrets.token_urlsafe(16),
                signing_key_dir=keys,
                orchestrator_email=ORCH_EMAIL,
                orchestrator_password=password,
                approved_models=[TCN],
            )
        creds = {ds: {"email": ORCH_EMAIL, "password": password, "datasite_id": ds} for ds in SITES}
        yield handles, parts, creds
    finally:
        for handle in handles.values():
            handle.stop()


def _manager(handles, creds, **options) -> PySyftCommunicationManager:
    comm = PySyftCommunicationManager(approval_timeout_s=20, training_timeout_s=300, **options)
    for ds, c in creds.items():
        assert comm.connect_to_datasite(handles[ds].url, c)
    return comm


def test_two_rounds_of_the_own_model_federate_under_dp_sgd_at_both_factories(factories):
    handles, parts, creds = factories
    comm = _manager(handles, creds)
    caps = comm.get_connected_datasites()
    for ds in SITES:
        assert caps[ds]["capabilities"]["approved_models"] == {TCN: source_digest(TCN)}
        assert TCN in caps[ds]["capabilities"]["supported_models"]
    torch.manual_seed(0)
    global_state = {
        k: v.clone() for k, v in build_model(TCN, N_FEATURES, WINDOW).state_dict().items()
    }
    start = global_state
    for round_number in (1, 2):
        states, sizes = [], []
        for ds in SITES:
            assert comm.send_model(global_state, ds)
            result = comm.request_training({**CONFIG, "round_number": round_number}, ds)
            assert "error" not in result, result.get("error")
            assert verify_factory_result(result, handles[ds].public_key)
            assert result["dp"]["epsilon"] > 0 and result["dp"]["noise_multiplier"] == 0.8
            states.append(result["model_update"])
            sizes.append(result["num_samples"])
        global_state = fedavg(states, sizes)
    assert any(not torch.equal(global_state[k], start[k]) for k in start), (
        "federation moved nothing"
    )
    X = torch.cat([torch.from_numpy(p["X"]) for p in parts.values()]).numpy()
    y = torch.cat([torch.from_numpy(p["y"]) for p in parts.values()]).numpy()
    assert torch.isfinite(torch.tensor(evaluate(global_state, X, y, TCN)["rmse"]))
    digest = training_request(model=TCN).digest()
    for ds in SITES:  # each factory's watcher approved exactly the model's job, by its hash
        approved = handles[ds].approved_requests()
        assert len(approved) == 2 and {a["request_hash"] for a in approved} == {digest}
    comm.cleanup_all_connections()


def test_a_changed_model_source_stays_pending_at_the_factory(factories, tmp_path):
    handles, _, creds = factories
    changed = tmp_path / "tcn_rul"
    shutil.copytree(EXAMPLE / "tcn_rul", changed)
    model_py = changed / "model.py"
    model_py.write_text(model_py.read_text().replace("channels: int = 24", "channels: int = 32"))
    job = model_training_job(TCN, package_digest(changed))  # the orchestrator's newer version
    ds = SITES[0]
    comm = _manager(handles, {ds: creds[ds]}, training_job=job)
    comm.approval_timeout_s = 3
    torch.manual_seed(0)
    assert comm.send_model(build_model(TCN, N_FEATURES, WINDOW).state_dict(), ds)
    result = comm.request_training({**CONFIG, "round_number": 3}, ds)
    assert result["error_type"] == "ApprovalPendingError", result
    pending = {p["request_id"]: p for p in handles[ds].pending_requests()}
    assert result["request_id"] in pending
    assert pending[result["request_id"]]["request_hash"] == training_request(job).digest()
    assert pending[result["request_id"]]["request_hash"] != training_request(model=TCN).digest()
    comm.cleanup_all_connections()
