"""The approved job's runtime, run in-process as the datasite would: real training, signed result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from federation.crypto.signing import SigningIdentity
from federation.datasite.job import ENV_DATASITE_ID, ENV_KEYS_DIR, run_training_job, training_delta
from federation.datasite.signing import verify_factory_result
from federation.ml.models import build_model
from federation.ml.train import train_local
from federation.wire.codec import decode_state_dict, encode_payload, encode_state_dict

DS = "chemical_houston_reactor"


@pytest.fixture()
def factory(tmp_path, monkeypatch) -> SigningIdentity:
    identity = SigningIdentity.load_or_create(tmp_path, DS)
    monkeypatch.setenv(ENV_DATASITE_ID, DS)
    monkeypatch.setenv(ENV_KEYS_DIR, str(tmp_path))
    return identity


def _data():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((24, 6, 3)).astype(np.float32)
    y = (50 + 10 * X[:, -1, 1]).astype(np.float32)
    torch.manual_seed(0)
    state = build_model("cnn", 3, 6).state_dict()
    return X, y, state


def test_when_the_job_runs__it_returns_train_local_results_signed_by_the_factory(factory):
    X, y, state = _data()
    cfg = {"epochs": 1, "batch_size": 8, "model_type": "cnn", "round_number": 2, "seed": 5}
    threads = torch.get_num_threads()
    try:
        out = run_training_job(X, y, encode_state_dict(state), encode_payload(cfg))
        local = train_local(state, X, y, {k: v for k, v in cfg.items() if k != "seed"}, 5)
    finally:
        torch.set_num_threads(threads)
    assert "error" not in out, out.get("error")
    update = decode_state_dict(out["model_update"])
    for k, v in local["model_update"].items():
        assert torch.equal(update[k], v)
    assert out["loss"] == local["loss"] and out["num_samples"] == 24
    result = {**out, "model_update": update, "delta": decode_state_dict(out["delta"])}
    assert verify_factory_result(result, factory.public_bytes())
    assert out["round_number"] == 2 and out["datasite_id"] == DS


def test_when_not_running_inside_a_datasite__the_job_returns_an_error_not_a_crash(monkeypatch):
    monkeypatch.delenv(ENV_DATASITE_ID, raising=False)
    X, y, state = _data()
    out = run_training_job(X, y, encode_state_dict(state), encode_payload({}))
    assert "not a pdmfed datasite" in out["error"]


@pytest.mark.parametrize("model, config", [(b"\x00junk", encode_payload({})),
                                           (None, encode_payload({})),
                                           ("state", b"\xc1")])  # fmt: skip
def test_when_inputs_are_malformed__the_job_returns_a_clear_error(factory, model, config):
    X, y, state = _data()
    model = encode_state_dict(state) if model == "state" else model
    out = run_training_job(X, y, model, config)
    assert set(out) == {"error"} and out["error"]


def test_when_a_delta_is_computed__floats_subtract_and_other_tensors_pass_through():
    g = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    u = {"w": torch.tensor([1.5, 1.0]), "n": torch.tensor(4)}
    d = training_delta(u, g)
    assert torch.equal(d["w"], torch.tensor([0.5, -1.0])) and torch.equal(d["n"], torch.tensor(4))


DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}


def _dp_config(**dp) -> bytes:
    return encode_payload(
        {
            "epochs": 1,
            "batch_size": 8,
            "model_type": "cnn",
            "round_number": 1,
            "seed": 3,
            "dp": {**DP, **dp},
        }
    )


def test_when_a_requester_chooses_the_dp_noise_seed__the_datasite_refuses_the_request(factory):
    """Knowing the seed, the requester could regenerate and subtract the noise yet get an epsilon."""
    X, y, state = _data()
    threads = torch.get_num_threads()
    try:
        out = run_training_job(X, y, encode_state_dict(state), _dp_config(noise_seed=7))
    finally:
        torch.set_num_threads(threads)
    assert "model_update" not in out and "delta" not in out
    assert "noise_seed" in out.get("error", "")


def test_when_the_requester_sends_the_same_request_twice__the_dp_noise_differs(factory):
    """The noise comes from a generator seeded by the OS's CSPRNG at the datasite, not the request."""
    X, y, state = _data()
    threads = torch.get_num_threads()
    try:
        a, b = (run_training_job(X, y, encode_state_dict(state), _dp_config()) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    assert "error" not in a and "error" not in b, (a.get("error"), b.get("error"))
    da, db = decode_state_dict(a["delta"]), decode_state_dict(b["delta"])
    assert any(not torch.equal(da[k], db[k]) for k in da)
    assert a["dp"]["epsilon"] == b["dp"]["epsilon"] > 0


def test_when_a_compromised_connector_moves_a_signed_delta__to_another_campaign_or_model__it_fails(
    factory,
):
    """The factory signs campaign, base model version, round and datasite with the delta."""
    from federation.datasite.signing import verify_update_signature
    from federation.errors import AuthError

    X, y, state = _data()
    cfg = {"epochs": 1, "batch_size": 8, "model_type": "cnn", "round_number": 4, "seed": 5,
           "campaign_id": "campaign-a", "model_version": 3}  # fmt: skip
    threads = torch.get_num_threads()
    try:
        out = run_training_job(X, y, encode_state_dict(state), encode_payload(cfg))
    finally:
        torch.set_num_threads(threads)
    assert "error" not in out, out.get("error")
    assert (out["campaign_id"], out["model_version"]) == ("campaign-a", 3)
    payload = {"campaign_id": "campaign-a", "model_version": 3, "round_num": 4, "datasite_id": DS,
               "delta": decode_state_dict(out["delta"]), "factory_signature": out["factory_signature"],
               "factory_key_id": DS}  # fmt: skip
    trust = {DS: factory.public_bytes()}
    verify_update_signature(payload, trust)
    with pytest.raises(AuthError):  # the same round number in another campaign
        verify_update_signature({**payload, "campaign_id": "campaign-b"}, trust)
    with pytest.raises(AuthError):  # trained from another global model
        verify_update_signature({**payload, "model_version": 4}, trust)
    result = {**out, "model_update": decode_state_dict(out["model_update"]),
              "delta": payload["delta"]}  # fmt: skip
    assert verify_factory_result(result, factory.public_bytes())
    with pytest.raises(AuthError):
        verify_factory_result({**result, "campaign_id": "campaign-b"}, factory.public_bytes())


def test_the_statistics_job_returns_the_partitions_exact_statistics_signed_for_its_campaign(
    factory,
):
    from federation.datasite.job import run_stats_job
    from federation.datasite.signing import verify_stats_signature
    from federation.errors import AuthError
    from federation.ml.fedstats import SensorStats, window_stats

    X, _, _ = _data()
    out = run_stats_job(X, encode_payload({"campaign_id": "camp-1"}))
    assert "error" not in out, out.get("error")
    assert SensorStats.from_dict(out["stats"]) == window_stats(X, ("x1", "x2", "x3"))
    verify_stats_signature(out, factory.public_bytes())
    for forged in ({**out, "campaign_id": "camp-2"},
                   {**out, "stats": {**out["stats"], "columns": ["a", "b", "c"]}}):  # fmt: skip
        with pytest.raises(AuthError):
            verify_stats_signature(forged, factory.public_bytes())


def test_when_the_training_config_ships_statistics__the_job_trains_on_the_z_scored_partition(
    factory,
):
    from federation.ml.fedstats import window_stats

    X, y, state = _data()
    raw = X * 40.0 + 600.0  # as a factory stores it: raw sensor values
    norm = window_stats(raw, ("x1", "x2", "x3")).normalizer()
    cfg = {"epochs": 1, "batch_size": 8, "model_type": "cnn", "round_number": 1, "seed": 5}
    threads = torch.get_num_threads()
    try:
        out = run_training_job(raw, y, encode_state_dict(state),
                               encode_payload({**cfg, "normalizer": norm.to_dict()}))  # fmt: skip
        local = train_local(state, norm.transform_windows(raw), y,
                            {k: v for k, v in cfg.items() if k != "seed"}, 5)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert "error" not in out, out.get("error")
    update = decode_state_dict(out["model_update"])
    assert all(torch.equal(update[k], v) for k, v in local["model_update"].items())


def test_when_the_campaign_asks_for_noisy_statistics__the_job_noises_them_and_refuses_a_seed(
    factory,
):
    from federation.datasite.job import run_stats_job
    from federation.datasite.signing import verify_stats_signature
    from federation.ml.fedstats import SensorStats, window_stats

    X, _, _ = _data()
    noise = {"noise_multiplier": 2.0, "bounds": [[-10.0, 10.0]] * 3}
    out = run_stats_job(X, encode_payload({"campaign_id": "camp-1", "noise": noise}))
    assert "error" not in out, out.get("error")
    noisy = SensorStats.from_dict(out["stats"])  # passes security's checks
    assert noisy != window_stats(X, ("x1", "x2", "x3"))
    verify_stats_signature(out, factory.public_bytes())  # the factory signs what it released
    seeded = run_stats_job(X, encode_payload({"campaign_id": "c", "noise": {**noise, "seed": 1}}))
    assert "names a seed" in seeded["error"]


def _regime_windows(seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows (24, 6, 3) whose rows run in two regimes far apart, and their settings."""
    rng = np.random.default_rng(seed)
    regime = rng.integers(0, 2, size=(24, 6))
    settings = np.stack([regime * 10.0 + rng.normal(0, 1e-3, regime.shape),
                         np.full(regime.shape, 100.0)], axis=2).astype(np.float32)  # fmt: skip
    X = (rng.standard_normal((24, 6, 3)) + 50.0 * regime[..., None]).astype(np.float32)
    return X, settings


def test_when_the_partition_keeps_settings__statistics_and_training_are_per_regime(
    factory, monkeypatch
):
    from federation.datasite.job import run_stats_job
    from federation.datasite.partition import ENV_REGIME_DECIMALS
    from federation.ml.fedstats import SensorStats, window_stats

    X, settings = _regime_windows()
    asset = np.concatenate([X, settings], axis=2)  # as the datasite's features asset holds it
    monkeypatch.setenv(ENV_REGIME_DECIMALS, "[0, 0]")
    out = run_stats_job(asset, encode_payload({"campaign_id": "camp-1"}))
    assert "error" not in out, out.get("error")
    stats = SensorStats.from_dict(out["stats"])
    assert stats == window_stats(X, ("x1", "x2", "x3"), settings, [0, 0])
    assert sorted(stats.regimes) == [(0.0, 100.0), (10.0, 100.0)]
    norm = stats.normalizer()
    _, y, state = _data()
    cfg = {"epochs": 1, "batch_size": 8, "model_type": "cnn", "round_number": 1, "seed": 5}
    threads = torch.get_num_threads()
    try:
        trained = run_training_job(asset, y, encode_state_dict(state),
                                   encode_payload({**cfg, "normalizer": norm.to_dict()}))  # fmt: skip
        z = norm.transform_windows(X, settings)
        local = train_local(state, z, y, {k: v for k, v in cfg.items() if k != "seed"}, 5)
    finally:
        torch.set_num_threads(threads)
    assert "error" not in trained, trained.get("error")
    assert abs(float(z.mean())) < 0.2 and abs(float(z.std()) - 1.0) < 0.2  # regimes removed
    update = decode_state_dict(trained["model_update"])
    assert all(torch.equal(update[k], v) for k, v in local["model_update"].items())
    # without the datasite's declaration the settings would be taken for sensors: refused
    monkeypatch.delenv(ENV_REGIME_DECIMALS)
    wrong = run_training_job(asset, y, encode_state_dict(state),
                             encode_payload({**cfg, "normalizer": norm.to_dict()}))  # fmt: skip
    assert "expected windows (n, window, 3)" in wrong["error"]
