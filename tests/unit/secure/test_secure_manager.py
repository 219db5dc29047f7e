"""SecurePySyftCommunicationManager: sealing, DP accounting, Byzantine screening, reporting."""

import time

import pytest
import torch
from federation.errors import (
    ConfigError,
    ExpiredError,
    IntegrityError,
    MalformedMessage,
    NoQuorumError,
    PrivacyBudgetExceeded,
    ReplayError,
    RobustnessError,
)
from federation.privacy import PrivacyAccountant, global_l2_norm

SEED_PACKAGE_KEYS = {
    "encrypted_data",
    "timestamp",
    "checksum",
    "security_version",
    "datasite_id",
    "round_num",
    "communication_type",
}


def _update(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(5),
    }


def test_when_an_update_is_encrypted__the_package_has_the_seeds_fields_and_round_trips(secure_comm):
    update = _update()
    package = secure_comm.encrypt_model_update(
        update, datasite_id="automotive_detroit_main", round_num=7
    )
    assert SEED_PACKAGE_KEYS <= set(package)
    assert package["security_version"] == "2.0" and package["communication_type"] == "secure"
    assert package["datasite_id"] == "automotive_detroit_main" and package["round_num"] == 7
    assert isinstance(package["encrypted_data"], bytes) and len(package["checksum"]) == 64
    assert update["conv.weight"].numpy().tobytes() not in package["encrypted_data"]
    back = secure_comm.decrypt_model_update(package)
    assert set(back) == set(update)
    for k in update:
        assert torch.equal(back[k], update[k]) and back[k].dtype == update[k].dtype


def test_when_the_ciphertext_is_altered__decryption_raises_integrity_error(secure_comm):
    package = secure_comm.encrypt_model_update(_update())
    ct = bytearray(package["encrypted_data"])
    ct[5] ^= 0x01
    with pytest.raises(IntegrityError):
        secure_comm.decrypt_model_update({**package, "encrypted_data": bytes(ct)})
    metrics = secure_comm.get_security_metrics()["security_metrics"]
    assert metrics["security_violations"] == 1 and metrics["violations_by_reason"] == {
        "integrity": 1
    }


@pytest.mark.parametrize(
    "field,value", [("datasite_id", "someone_else"), ("round_num", 8), ("checksum", "0" * 64)]
)
def test_when_a_header_field_is_altered__decryption_raises_integrity_error(
    secure_comm, field, value
):
    package = secure_comm.encrypt_model_update(_update(), datasite_id="site_a", round_num=7)
    with pytest.raises(IntegrityError):
        secure_comm.decrypt_model_update({**package, field: value})


def test_when_a_package_is_replayed__the_second_decryption_raises_replay_error(secure_comm):
    package = secure_comm.encrypt_model_update(_update())
    secure_comm.decrypt_model_update(package)
    with pytest.raises(ReplayError):
        secure_comm.decrypt_model_update(package)


def test_when_a_package_is_older_than_the_window__decryption_raises_expired_error(make_manager):
    old_sender = make_manager(clock=lambda: time.time() - 10_000)
    package = old_sender.encrypt_model_update(_update())
    with pytest.raises(ExpiredError):
        make_manager().decrypt_model_update(package)


def test_when_the_key_is_wrong__decryption_raises_integrity_error(make_manager):
    package = make_manager().encrypt_model_update(_update())
    with pytest.raises(IntegrityError):
        make_manager(salt="a-different-deployment-salt").decrypt_model_update(package)


def test_when_a_package_is_garbage__decryption_raises_malformed_message(secure_comm):
    with pytest.raises(MalformedMessage):
        secure_comm.decrypt_model_update({"encrypted_data": b"x"})
    with pytest.raises(MalformedMessage):
        secure_comm.decrypt_model_update(b"\x00\x01not an envelope")


def test_when_two_managers_share_passphrase_and_salt__one_opens_what_the_other_sealed(make_manager):
    package = make_manager().encrypt_model_update(_update(3), datasite_id="x", round_num=1)
    assert torch.equal(
        make_manager().decrypt_model_update(package)["conv.bias"], _update(3)["conv.bias"]
    )


def test_when_dp_is_applied__the_change_is_clipped_and_noise_has_std_z_times_sensitivity(
    make_manager,
):
    comm = make_manager(noise_multiplier=0.5)
    comm.set_reference_model({"w": torch.zeros(100_000)})
    update = {"w": torch.full((100_000,), 0.01)}  # norm 3.16 > sensitivity 2
    noisy = comm.apply_differential_privacy(update, sensitivity=2.0)["w"]
    assert float(noisy.std()) == pytest.approx(1.0, rel=0.02)
    assert float(noisy.mean()) == pytest.approx(2.0 / 100_000**0.5, abs=0.01)


def test_when_dp_runs_rounds__epsilon_spent_matches_the_accountant_and_the_budget_refuses(
    make_manager,
):
    acct = PrivacyAccountant(1.0, 1.0, 1e-5)
    budget = (acct.epsilon_after(2) + acct.epsilon_after(3)) / 2
    comm = make_manager(noise_multiplier=1.0, max_epsilon=budget)
    for _ in range(2):
        comm.apply_differential_privacy(_update(), datasite_id="site_a")
    with pytest.raises(PrivacyBudgetExceeded):
        comm.apply_differential_privacy(_update(), datasite_id="site_a")
    comm.apply_differential_privacy(_update(), datasite_id="site_b")  # its own ledger
    metrics = comm.get_security_metrics()["security_metrics"]
    assert metrics["epsilon_spent"] == pytest.approx(acct.epsilon_after(2))
    assert metrics["dp_noise_applications"] == 3 and metrics["dp_rounds"] == 2


def test_when_dp_is_disabled__apply_differential_privacy_returns_an_equal_copy(make_manager):
    update = _update()
    out = make_manager(enable_dp=False).apply_differential_privacy(update)
    assert all(torch.equal(out[k], update[k]) for k in update)


def _round(n, evil=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(32, generator=g)
    ups = []
    for i in range(n):
        w = base + 0.3 * torch.randn(32, generator=g)
        if i in evil:
            w = -w
        ups.append({"datasite_id": f"site_{i}", "model_update": {"w": w}, "num_samples": 100})
    return ups


def test_when_a_client_sign_flips__detect_filters_it_and_reports_it(secure_comm):
    filtered, byzantine = secure_comm.detect_byzantine_clients(_round(5, evil={2}))
    assert byzantine == ["site_2"]
    assert [u["datasite_id"] for u in filtered] == ["site_0", "site_1", "site_3", "site_4"]
    report = secure_comm.get_client_reputation_report()
    assert report["client_reputations"]["site_2"] == pytest.approx(0.5)
    assert report["update_history_summary"]["site_0"]["num_updates"] == 1
    assert report["byzantine_detection_summary"] == {
        "total_attacks_detected": 1,
        "total_clients_filtered": 0,
        "reputation_updates": 5,
    }


def test_when_an_offender_repeats__reputation_filtering_drops_it_even_when_it_behaves(secure_comm):
    for r in range(3):
        secure_comm.detect_byzantine_clients(_round(5, evil={4}, seed=r))
    honest_round = _round(5, seed=9)
    filtered, byzantine = secure_comm.detect_byzantine_clients(honest_round)
    assert byzantine == [] and len(filtered) == 5
    trusted = secure_comm.apply_reputation_filtering(filtered, reputation_threshold=0.3)
    assert [u["datasite_id"] for u in trusted] == ["site_0", "site_1", "site_2", "site_3"]
    summary = secure_comm.get_security_metrics()["client_reputation_summary"]
    assert summary["low_reputation_clients"] == ["site_4"]


def test_when_aggregating_with_bft__the_attacker_does_not_move_the_result(secure_comm):
    ups = _round(6, evil={0})
    ups[0]["model_update"] = {"w": ups[0]["model_update"]["w"] * 50}
    aggregated, byzantine = secure_comm.secure_aggregation_with_bft(ups)
    honest = torch.stack([u["model_update"]["w"] for u in ups[1:]])
    assert byzantine == ["site_0"]
    sorted_honest = torch.sort(honest, dim=0).values
    torch.testing.assert_close(aggregated["w"], sorted_honest[1:4].mean(0))  # trimmed mean of 5


def test_when_fewer_clients_than_min_clients_send__bft_aggregation_refuses_with_no_quorum(
    make_manager,
):
    from federation.monitoring.metrics import Metrics
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    comm = make_manager(enable_dp=False, min_clients=3, metrics=Metrics("security", registry))
    ups = _round(2)
    ups[1]["model_update"] = {"w": ups[1]["model_update"]["w"] * 100}  # too few to be judged
    with pytest.raises(NoQuorumError) as err:
        comm.secure_aggregation_with_bft(ups)
    assert err.value.reason == "no_quorum" and isinstance(err.value, RobustnessError)
    assert err.value.quorum == {"required": 1, "accepted": 0, "screened": 0, "min_clients": 3}
    assert "at least 3 screened" in str(err.value)
    counters = comm.get_security_metrics()["security_metrics"]
    assert counters["aggregations"] == 0 and counters["no_quorum_refusals"] == 1
    assert comm.reputation.scores() == {}  # nothing judged, no reputation earned
    failed = registry.get_sample_value("pdmfed_rounds_failed_total", {"reason": "no_quorum"})
    assert failed == 1


def test_when_min_clients_send__bft_aggregation_runs_and_a_quorum_counts_accepted_updates(
    make_manager,
):
    comm = make_manager(enable_dp=False, min_clients=3)
    ups = _round(3)
    aggregated, byzantine = comm.secure_aggregation_with_bft(ups)
    assert byzantine == []
    mean = torch.stack([u["model_update"]["w"] for u in ups]).mean(0)  # plain mean below 5
    torch.testing.assert_close(aggregated["w"], mean)
    strict = make_manager(enable_dp=False, min_clients=3, quorum=4)
    with pytest.raises(NoQuorumError) as err:
        strict.secure_aggregation_with_bft(_round(3))
    assert err.value.quorum == {"required": 4, "accepted": 3, "screened": 3, "min_clients": 3}


def test_when_bft_is_off__min_clients_does_not_apply_but_the_quorum_does(make_manager):
    comm = make_manager(enable_dp=False, enable_bft=False, min_clients=3)
    aggregated, _ = comm.secure_aggregation_with_bft(_round(1))
    torch.testing.assert_close(aggregated["w"], _round(1)[0]["model_update"]["w"])
    with pytest.raises(NoQuorumError):
        comm.secure_aggregation_with_bft([])


def test_when_the_step_by_step_flow_gets_fewer_than_min_clients__aggregation_refuses_no_quorum(
    make_manager,
):
    # The seed's flow: detect -> reputation filtering -> aggregate_secure_updates.
    comm = make_manager(enable_dp=False, min_clients=3)
    filtered, _ = comm.detect_byzantine_clients(_round(2))
    trusted = comm.apply_reputation_filtering(filtered, reputation_threshold=0.3)
    assert len(trusted) == 2  # nothing judged, nothing filtered
    with pytest.raises(NoQuorumError) as err:
        comm.aggregate_secure_updates(trusted)
    assert err.value.quorum == {"required": 1, "accepted": 0, "screened": 0, "min_clients": 3}
    counters = comm.get_security_metrics()["security_metrics"]
    assert counters["aggregations"] == 0 and counters["no_quorum_refusals"] == 1
    fresh = make_manager(enable_dp=False, min_clients=3)
    with pytest.raises(NoQuorumError):  # never screened at all
        fresh.aggregate_secure_updates(_round(5))


def test_when_the_step_by_step_flow_screens_min_clients__aggregation_runs_on_the_kept_updates(
    make_manager,
):
    comm = make_manager(enable_dp=False, min_clients=3, quorum=3)
    ups = _round(4, evil={1})
    filtered, byzantine = comm.detect_byzantine_clients(ups)
    assert byzantine == ["site_1"]
    out = comm.aggregate_secure_updates(comm.apply_reputation_filtering(filtered))
    kept = torch.stack([ups[i]["model_update"]["w"] for i in (0, 2, 3)])
    torch.testing.assert_close(out["w"], kept.mean(0))
    with pytest.raises(RobustnessError, match="site_1"):  # the flagged one cannot be slipped in
        comm.aggregate_secure_updates(ups)
    with pytest.raises(NoQuorumError) as err:  # 2 kept updates do not meet quorum 3
        comm.aggregate_secure_updates(filtered[:2])
    assert err.value.quorum["accepted"] == 2 and err.value.quorum["screened"] == 4


def test_when_the_reference_model_is_known__full_weights_are_screened_as_deltas(secure_comm):
    g = torch.Generator().manual_seed(1)
    global_w = 5.0 + torch.randn(32, generator=g)
    secure_comm.set_reference_model({"w": global_w})
    ups = [
        {"datasite_id": f"s{i}", "model_update": {"w": global_w + u["model_update"]["w"] * 0.01}}
        for i, u in enumerate(_round(5, evil={1}))
    ]
    _, byzantine = secure_comm.detect_byzantine_clients(ups)
    assert byzantine == ["s1"]


def test_when_central_dp_is_on__aggregation_is_dp_fedavg_and_spends_one_round(make_manager):
    comm = make_manager(dp_mode="central", noise_multiplier=0.0, clip_norm=1.0, enable_bft=False)
    ups = [
        {"datasite_id": "a", "model_update": {"w": torch.tensor([3.0, 4.0])}},
        {"datasite_id": "b", "model_update": {"w": torch.tensor([0.3, 0.4])}},
    ]
    out = comm.aggregate_secure_updates(ups)["w"]
    torch.testing.assert_close(out, torch.tensor([0.45, 0.6]), rtol=1e-5, atol=0)
    assert comm.get_security_metrics()["security_metrics"]["dp_rounds"] == 1
    noisy = make_manager(dp_mode="central", noise_multiplier=1.0, clip_norm=1.0, enable_bft=False)
    assert global_l2_norm(noisy.aggregate_secure_updates(ups)) > 0


def test_when_the_seeds_trimmed_mean_helper_runs__it_trims_per_coordinate(secure_comm):
    tensors = [torch.tensor([float(v), -float(v)]) for v in (1, 2, 3, 4, 100)]
    out = secure_comm._trimmed_mean_aggregation(param_tensors=tensors, trim_ratio=0.1)
    torch.testing.assert_close(out, torch.tensor([3.0, -3.0]))


def test_when_updates_are_malformed__bft_methods_raise_robustness_error(secure_comm):
    with pytest.raises(RobustnessError):
        secure_comm.detect_byzantine_clients([{"model_update": {"w": torch.ones(2)}}])
    with pytest.raises(RobustnessError):
        secure_comm.aggregate_secure_updates([])
    with pytest.raises(RobustnessError):
        secure_comm.detect_byzantine_clients([{"datasite_id": "a", "model_update": {"w": [1, 2]}}])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dp_mode": "hybrid"},
        {"bft_threshold": 0},
        {"min_clients": 0},
        {"quorum": 0},
        {"noise_multiplier": -1.0},
        {"aggregation": "bulyan"},
        {"key": ""},
        {"delta": 5.0},
    ],
)
def test_when_the_configuration_is_invalid__construction_raises_config_error(make_manager, kwargs):
    with pytest.raises(ConfigError):
        make_manager(**kwargs)


def test_when_state_is_exported_and_imported__reputation_and_ledgers_survive(make_manager):
    a = make_manager()
    a.detect_byzantine_clients(_round(5, evil={3}))
    a.apply_differential_privacy(_update(), datasite_id="site_0")
    b = make_manager()
    b.import_state(a.export_state())
    assert b.get_client_reputation_report() == a.get_client_reputation_report()
    assert b.get_security_metrics()["security_metrics"]["epsilon_spent"] == pytest.approx(
        a.get_security_metrics()["security_metrics"]["epsilon_spent"]
    )


def test_when_no_datasite_is_connected__send_model_update_reports_failure_without_raising(
    secure_comm,
):
    result = secure_comm.send_model_update("nowhere", _update(), round_num=3)
    assert result["success"] is False and "not connected" in result["error"]
    assert result["round_num"] == 3 and len(result["checksum"]) == 64


def test_when_a_transport_is_given__send_model_update_delivers_an_envelope_the_peer_can_open(
    make_manager,
):
    sent = []
    sender = make_manager(transport=lambda site, body: sent.append((site, body)))
    result = sender.send_model_update("site_9", _update(4), round_num=2)
    assert result["success"] and result["delivered_via"] == "transport"
    site, body = sent[0]
    assert site == "site_9"
    assert torch.equal(
        make_manager().decrypt_model_update(body)["conv.weight"], _update(4)["conv.weight"]
    )
