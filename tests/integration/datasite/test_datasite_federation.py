"""PySyftCommunicationManager against two real PySyft datasites: connect, discover, send, train, broadcast, failures."""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace

import pytest
import torch
from datasite_helpers import N_FEATURES, WINDOW, tiny_global_model
from federation.communication import PySyftCommunicationManager
from federation.crypto.signing import TrustStore
from federation.datasite import (
    approved_job_hashes,
    verify_factory_result,
    verify_update_signature,
)
from federation.errors import AuthError, IntegrityError
from federation.ml.train import train_local

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CONFIG = {
    "epochs": 2,
    "learning_rate": 0.01,
    "batch_size": 16,
    "model_type": "cnn",
    "round_number": 3,
    "seed": 11,
}


@pytest.fixture(scope="module")
def manager(two_sites):
    comm = PySyftCommunicationManager(approval_timeout_s=20, training_timeout_s=120)
    for site in two_sites.values():
        assert comm.connect_to_datasite(site.handle.url, site.credentials)
    yield comm
    comm.cleanup_all_connections()


def _local(partition, config):
    cfg = dict(config)
    seed = cfg.pop("seed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the datasite's job trains single-threaded
    try:
        return train_local(tiny_global_model(), partition["X"], partition["y"], cfg, seed)
    finally:
        torch.set_num_threads(threads)


def test_when_two_datasites_launch__each_serves_on_its_own_port_from_its_own_process(two_sites):
    handles = [s.handle for s in two_sites.values()]
    assert len({h.port for h in handles}) == 2
    assert len({h.pid for h in handles}) == 2
    assert all(h.is_alive() for h in handles)


def test_when_connected__discovery_reports_what_the_datasite_itself_holds(manager, two_sites):
    info = manager.get_connected_datasites()
    assert set(info) == set(two_sites)
    for ds, site in two_sites.items():
        entry = info[ds]
        assert entry["url"] == site.handle.url and entry["status"] == "connected"
        caps = entry["capabilities"]
        assert caps["syft_version"] == "0.9.5"
        assert caps["num_samples"] == len(site.partition["y"])
        assert (caps["window"], caps["n_features"]) == (WINDOW, N_FEATURES)
        assert set(caps["supported_models"]) == {"cnn", "lstm", "hybrid"}
        assert caps["factory_public_key"] == site.handle.public_key.hex()
        assets = {a["name"]: a["shape"] for a in caps["datasets"][0]["assets"]}
        assert assets["features"] == list(site.partition["X"].shape)
        assert entry["connection_time"].count(":") == 2
    assert manager.get_connection_status() == {ds: "connected" for ds in two_sites}
    assert all(manager.is_connected(ds) for ds in two_sites)


def test_when_training_on_two_datasites__results_equal_local_training_on_the_same_partition(
    manager, two_sites
):
    global_model = tiny_global_model()
    for ds, site in two_sites.items():
        assert manager.send_model(global_model, ds) is True
        result = manager.request_training(CONFIG, ds)
        assert "error" not in result, result.get("error")
        local = _local(site.partition, CONFIG)
        assert result["num_samples"] == local["num_samples"] == len(site.partition["y"])
        assert result["loss"] == pytest.approx(local["loss"], rel=1e-5)
        assert result["rmse"] == pytest.approx(local["rmse"], rel=1e-5)
        assert result["accuracy"] == pytest.approx(local["accuracy"])
        assert result["training_time"] > 0
        for name, tensor in local["model_update"].items():
            torch.testing.assert_close(result["model_update"][name], tensor, rtol=0, atol=0)
        changed = any(
            not torch.equal(result["model_update"][k], v) for k, v in global_model.items()
        )
        assert changed, "training did not move the model"
        # the factory signed it at the datasite with its own key
        assert verify_factory_result(result, site.handle.public_key) is True
        trust = TrustStore({ds: site.handle.public_key})
        payload = {
            "datasite_id": ds,
            "round_num": CONFIG["round_number"],
            "delta": result["delta"],
            "factory_signature": result["factory_signature"],
            "factory_key_id": result["factory_key_id"],
        }
        verify_update_signature(payload, trust)


def test_when_a_datasite_this_process_knew_goes_dark__requests_to_the_others_never_ask_it(
    manager, two_sites
):
    """PySyft's own input lookup iterates its process-wide registry, asking every datasite the
    process ever logged into whether it holds each input: one whose packets are dropped stalled
    every other factory's code requests until they timed out (and a parallel login raced the
    iteration). Never asked means the registry is not iterated at all."""
    from syft.client.api import APIRegistry
    from syft.service.user.user import SyftSigningKey
    from syft.types.uid import UID

    asked = []

    def exists(uid):
        asked.append(uid)
        time.sleep(60)  # no answer: the datasite's host dropped off the network
        return False

    dark = SimpleNamespace(services=SimpleNamespace(action=SimpleNamespace(exists=exists)))
    key = (UID(), SyftSigningKey.generate().verify_key)
    APIRegistry.set_api_for(*key, api=dark)
    registry = APIRegistry.__dict__["__api_registry__"]
    registry.move_to_end(key, last=False)  # logged into before the live ones
    try:
        ds = "chemical_houston_reactor"
        assert manager.send_model(tiny_global_model(), ds) is True
        result = manager.request_training(CONFIG, ds)
        stats = manager.request_stats({"campaign_id": "dark-neighbour"}, ds)
    finally:
        del registry[key]
    assert "error" not in result, result.get("error")
    assert "error" not in stats, stats.get("error")
    assert asked == []


def test_when_a_signed_update_is_altered__verification_fails(manager, two_sites):
    ds = "automotive_detroit_main"
    site = two_sites[ds]
    assert manager.send_model(tiny_global_model(), ds)
    result = manager.request_training({**CONFIG, "epochs": 1}, ds)
    assert "error" not in result, result.get("error")
    name = next(iter(result["model_update"]))
    tampered = dict(result)
    tampered["model_update"] = dict(result["model_update"])
    tampered["model_update"][name] = result["model_update"][name] + 1e-3
    with pytest.raises(IntegrityError):
        verify_factory_result(tampered, site.handle.public_key)
    from federation.wire.codec import tensor_digest

    tampered["update_digest"] = tensor_digest(tampered["model_update"])  # a careful attacker
    with pytest.raises(AuthError):
        verify_factory_result(tampered, site.handle.public_key)
    other = two_sites["chemical_houston_reactor"].handle.public_key
    with pytest.raises(AuthError):
        verify_factory_result(result, other)
    payload = {
        "datasite_id": ds,
        "round_num": CONFIG["round_number"] + 1,
        "delta": result["delta"],
        "factory_signature": result["factory_signature"],
    }
    with pytest.raises(AuthError):  # replaying a signed delta in another round
        verify_update_signature(payload, {ds: site.handle.public_key})


def test_when_the_job_code_is_altered__the_request_stays_pending_and_is_reported(two_sites):
    def pdmfed_train_job(features, labels, global_model, train_config):
        return {"leak": features}  # not the factory's approved job

    ds = "chemical_houston_reactor"
    site = two_sites[ds]
    comm = PySyftCommunicationManager(approval_timeout_s=2, training_job=pdmfed_train_job)
    assert comm.connect_to_datasite(site.handle.url, site.credentials)
    assert comm.send_model(tiny_global_model(), ds)
    result = comm.request_training(CONFIG, ds)
    assert result["error_type"] == "ApprovalPendingError"
    assert "pending" in result["error"]
    pending = {p["request_id"]: p for p in site.handle.pending_requests()}
    assert result["request_id"] in pending
    assert pending[result["request_id"]]["request_hash"] not in approved_job_hashes()
    assert result["request_id"] not in {a["request_id"] for a in site.handle.approved_requests()}
    assert comm.is_connected(ds)  # a refused job is not a broken connection
    comm.cleanup_all_connections()


def test_when_broadcasting__every_connected_datasite_receives_the_message(manager, two_sites):
    results = manager.broadcast_to_all(
        {"message_type": "training_complete", "global_model_version": "2.1"}
    )
    assert results == {ds: True for ds in two_sites}


def test_when_the_url_is_wrong__connect_fails_and_status_is_disconnected(two_sites):
    from federation.datasite.launcher import free_port

    comm = PySyftCommunicationManager(connect_timeout_s=15)
    creds = dict(next(iter(two_sites.values())).credentials, datasite_id="nowhere")
    assert comm.connect_to_datasite(f"http://127.0.0.1:{free_port()}", creds) is False
    assert comm.get_connection_status() == {"nowhere": "disconnected"}
    assert comm.send_model(tiny_global_model(), "nowhere") is False
    assert "error" in comm.request_training(CONFIG, "nowhere")


def test_when_the_password_is_wrong__connect_fails_with_status_error_then_succeeds(two_sites):
    site = two_sites["automotive_detroit_main"]
    comm = PySyftCommunicationManager()
    bad = dict(site.credentials, password="not-the-password")
    assert comm.connect_to_datasite(site.handle.url, bad) is False
    assert comm.get_connection_status() == {"automotive_detroit_main": "error"}
    assert comm.connect_to_datasite(site.handle.url, site.credentials) is True
    assert comm.is_connected("automotive_detroit_main")


def test_when_training_exceeds_the_timeout__result_has_error_and_reconnect_recovers(two_sites):
    ds = "chemical_houston_reactor"
    site = two_sites[ds]
    comm = PySyftCommunicationManager(training_timeout_s=0.05, approval_timeout_s=20)
    assert comm.connect_to_datasite(site.handle.url, site.credentials)
    assert comm.send_model(tiny_global_model(), ds)
    result = comm.request_training(CONFIG, ds)
    assert result["error_type"] == "TimeoutError" and "longer than" in result["error"]
    assert comm.get_connection_status()[ds] == "error"
    assert comm.reconnect(ds) is True and comm.is_connected(ds)


def test_when_disconnecting__status_changes_and_cleanup_forgets_everything(two_sites):
    comm = PySyftCommunicationManager()
    for site in two_sites.values():
        assert comm.connect_to_datasite(site.handle.url, site.credentials)
    assert comm.disconnect_from_datasite("automotive_detroit_main") is True
    assert comm.get_connection_status()["automotive_detroit_main"] == "disconnected"
    assert not comm.is_connected("automotive_detroit_main")
    assert comm.broadcast_to_all({"x": 1}) == {
        "automotive_detroit_main": False,
        "chemical_houston_reactor": True,
    }
    assert comm.disconnect_from_datasite("unknown") is False
    comm.cleanup_all_connections()
    assert comm.get_connection_status() == {}


def test_when_the_model_is_sent__the_datasite_holds_exactly_its_bytes(manager, two_sites):
    from federation.wire.codec import encode_state_dict

    model = tiny_global_model(seed=5)
    ds = "automotive_detroit_main"
    assert manager.send_model(model, ds)
    session = manager._sessions[ds]
    assert session.model_digest == hashlib.sha256(encode_state_dict(model)).hexdigest()
