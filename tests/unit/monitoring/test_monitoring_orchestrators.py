"""The orchestrators over an in-memory transport; the security math is the real secure manager."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from federation.communication import (
    FederatedLearningOrchestrator,
    ProductionSecureOrchestrator,
    PySyftCommunicationManager,
    SecurePySyftCommunicationManager,
)
from federation.communication.orchestrators import (
    InsufficientDatasitesError,
    campaign_summary,
)
from federation.errors import ConfigError, DatasiteConnectionError, TrainingError
from federation.ml.data import Normalizer
from federation.ml.fedstats import SensorStats, window_rows, window_stats
from federation.monitoring import validate_security_configuration
from federation.monitoring.report import load_summary, render_report

PASSPHRASE = "unit-test-passphrase-orchestrators"
SHAPES = {"w": (6, 5), "b": (6,)}


@pytest.fixture(autouse=True)
def _deployment_salt(monkeypatch):
    """The seed's orchestrators name no salt: the deployment supplies it, as an operator's does."""
    monkeypatch.setenv("PDMFED_KEY_SALT", "unit-test-salt-orchestrators")


def _global(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}


class _InMemorySites:
    """Factories reachable in memory: honest ones step along a shared direction, attackers not.

    behaviour per site: "honest", "scale" (20x the honest step), "flip" (the honest step
    reversed), "down" (connect fails), "broken" (training returns an error).
    """

    def __init__(self, behaviour: dict[str, str]) -> None:
        self.behaviour = dict(behaviour)
        g = torch.Generator().manual_seed(42)
        self.direction = {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}
        self.status: dict[str, str] = {}
        self.models: dict[str, dict[str, torch.Tensor]] = {}
        self.configs: list[dict[str, Any]] = []
        self.stats_requests: list[str] = []
        self.raw: dict[str, np.ndarray] = {}

    def connect(self, credentials: dict[str, Any]) -> bool:
        ds = credentials["datasite_id"]
        ok = self.behaviour[ds] != "down"
        self.status[ds] = "connected" if ok else "disconnected"
        return ok

    def stats(self, ds: str) -> dict[str, Any]:
        """Round 0: this site's exact statistics of its own raw windows (sites differ in scale)."""
        self.stats_requests.append(ds)
        g = np.random.default_rng(sum(map(ord, ds)))
        self.raw[ds] = g.normal(5.0 * len(self.raw), 2.0 + len(self.raw), (4, 3, 2))
        return {"datasite_id": ds, "stats": window_stats(self.raw[ds], ("x1", "x2")).to_dict()}

    def train(self, ds: str, config: dict[str, Any]) -> dict[str, Any]:
        self.configs.append(dict(config))
        if self.behaviour[ds] == "broken":
            return {"datasite_id": ds, "error": "job crashed", "error_type": "TrainingError"}
        g = torch.Generator().manual_seed(hash(ds) % 1000 + int(config["round_number"]))
        step = {
            k: 0.1 * d + 0.01 * torch.randn(d.shape, generator=g) for k, d in self.direction.items()
        }
        factor = {"scale": 20.0, "flip": -1.0}.get(self.behaviour[ds], 1.0)
        update = {k: self.models[ds][k] + factor * step[k] for k in step}
        return {"model_update": update, "num_samples": 10, "loss": 1.0, "datasite_id": ds}


class _Transport:
    """The PySyft half of a manager, served by _InMemorySites."""

    sites: _InMemorySites

    def connect_to_datasite(self, datasite_url: str, credentials: dict[str, Any]) -> bool:
        return self.sites.connect(dict(credentials))

    def get_connected_datasites(self) -> dict[str, dict[str, Any]]:
        return {ds: {"status": s, "capabilities": {}} for ds, s in self.sites.status.items()}

    def get_connection_status(self) -> dict[str, str]:
        return dict(self.sites.status)

    def is_connected(self, datasite_id: str) -> bool:
        return self.sites.status.get(datasite_id) == "connected"

    def request_training(self, training_config: dict[str, Any], datasite_id: str) -> dict:
        return self.sites.train(datasite_id, dict(training_config))

    def request_stats(self, stats_config: dict[str, Any], datasite_id: str) -> dict:
        return self.sites.stats(datasite_id)


class FakeStandardComm(_Transport, PySyftCommunicationManager):
    def __init__(self, sites: _InMemorySites) -> None:
        PySyftCommunicationManager.__init__(self)
        self.sites = sites

    def send_model(self, model_parameters, datasite_id) -> bool:
        self.sites.models[datasite_id] = {k: v.clone() for k, v in model_parameters.items()}
        return True


class FakeSecureComm(_Transport, SecurePySyftCommunicationManager):
    def __init__(self, sites: _InMemorySites, **options: Any) -> None:
        SecurePySyftCommunicationManager.__init__(
            self, encryption_key=PASSPHRASE, seed=0, **{"enable_dp": False, **options}
        )
        self.sites = sites

    def send_model(self, model_parameters, datasite_id) -> bool:
        self.set_reference_model(model_parameters)
        self.sites.models[datasite_id] = {k: v.clone() for k, v in model_parameters.items()}
        return True


def _configs(*ids: str) -> list[dict[str, Any]]:
    return [
        {
            "url": f"http://127.0.0.1:{9000 + i}",
            "credentials": {"email": "o@x", "password": "p"},
            "datasite_id": ds,
        }
        for i, ds in enumerate(ids)
    ]


# --- FederatedLearningOrchestrator -----------------------------------------------------------
def test_when_only_one_datasite_connects__the_round_raises_insufficient_datasites():
    sites = _InMemorySites({"a": "honest", "b": "down"})
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites))
    with pytest.raises(InsufficientDatasitesError) as err:
        orch.execute_federated_round(_global(), _configs("a", "b"), 1)
    assert isinstance(err.value, DatasiteConnectionError)
    assert str(err.value).startswith("Insufficient datasites for federated learning")
    assert "b:" in str(err.value) and "1 connected" in str(err.value)
    assert sites.configs == []  # nothing was trained


def test_when_the_standard_path_runs__the_aggregate_is_the_plain_mean_of_the_updates():
    sites = _InMemorySites({"a": "honest", "b": "honest", "c": "scale"})
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites))
    g = _global()
    result = orch.execute_federated_round(g, _configs("a", "b", "c"), 4)
    updates = [result["training_results"][ds]["model_update"] for ds in ("a", "b", "c")]
    for k in SHAPES:
        expected = (updates[0][k] + updates[1][k] + updates[2][k]) / 3
        torch.testing.assert_close(result["aggregated_model"][k], expected)
    assert result["participating_sites"] == ["a", "b", "c"]
    assert "byzantine_clients" not in result
    # the seed's training request, round number filled in, normalised by round 0's statistics
    assert {k: v for k, v in sites.configs[0].items() if k != "normalizer"} == {
        "epochs": 3,
        "learning_rate": 0.001,
        "batch_size": 32,
        "round_number": 4,
    }


def test_when_rounds_run__round_0_sums_the_sites_statistics_once_and_every_request_carries_them():
    sites = _InMemorySites({"a": "honest", "b": "honest", "c": "honest"})
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites))
    g = _global()
    orch.execute_federated_round(g, _configs("a", "b", "c"), 1)
    orch.execute_federated_round(g, _configs("a", "b", "c"), 2)
    assert sites.stats_requests == ["a", "b", "c"]  # once, not per round
    union = np.concatenate([window_rows(sites.raw[ds]) for ds in ("a", "b", "c")])
    want = Normalizer.from_dict(SensorStats.of_rows(union, ("x1", "x2")).normalizer().to_dict())
    got = [Normalizer.from_dict(c["normalizer"]) for c in sites.configs]
    assert len(got) == 6
    for n in got:
        np.testing.assert_allclose(n.transform_windows(sites.raw["a"]),
                                   want.transform_windows(sites.raw["a"]), rtol=1e-6)  # fmt: skip
    # central statistics of the union: the pooled rows come out with mean 0 and std 1
    z = want.transform_windows(union[None])[0]
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)


def test_when_one_site_lies_in_round_0__the_seed_path_leaves_its_statistics_out():
    sites = _InMemorySites({"a": "honest", "b": "honest", "c": "honest"})
    honest_stats = sites.stats

    def stats(ds):
        out = honest_stats(ds)
        if ds == "c":  # its own rows, every value shifted by 1e6
            out["stats"] = window_stats(sites.raw[ds] + 1e6, ("x1", "x2")).to_dict()
        return out

    sites.stats = stats
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites))
    orch.execute_federated_round(_global(), _configs("a", "b", "c"), 1)
    honest = np.concatenate([window_rows(sites.raw[ds]) for ds in ("a", "b")])
    want = SensorStats.of_rows(honest, ("x1", "x2")).normalizer().to_dict()
    assert all(c["normalizer"] == want for c in sites.configs) and len(sites.configs) == 3


def test_when_a_normalizer_is_given__round_0_is_skipped_and_it_is_used_as_given():
    sites = _InMemorySites({"a": "honest", "b": "honest"})
    given = SensorStats.of_rows(np.ones((3, 2)) * [[1.0], [2.0], [3.0]], ("x1", "x2"))
    cfg = {"normalizer": given.normalizer().to_dict()}
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites), training_config=cfg)
    orch.execute_federated_round(_global(), _configs("a", "b"), 1)
    assert sites.stats_requests == [] and all(
        c["normalizer"] == cfg["normalizer"] for c in sites.configs
    )


def test_when_too_few_sites_send_statistics__round_0_refuses_to_train():
    sites = _InMemorySites({"a": "honest", "b": "honest"})
    sites.stats = lambda ds: {"datasite_id": ds, "error": "stats job not approved"}
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites))
    with pytest.raises(TrainingError, match="round 0: statistics kept from 0 datasites, need 2"):
        orch.execute_federated_round(_global(), _configs("a", "b"), 1)
    assert sites.configs == []


def test_when_a_module_is_given__its_state_dict_is_sent():
    sites = _InMemorySites({"a": "honest", "b": "honest"})
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites))
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(_global()["w"])
    model.b = torch.nn.Parameter(_global()["b"])
    orch.execute_federated_round(model, _configs("a", "b"), 0)
    torch.testing.assert_close(sites.models["a"]["w"], _global()["w"])
    assert not sites.models["a"]["w"].requires_grad  # the seed's clone().detach()


def test_when_a_datasite_fails_training__it_is_left_out_and_named_in_failed_sites():
    sites = _InMemorySites({"a": "honest", "b": "honest", "c": "broken"})
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites))
    result = orch.execute_federated_round(_global(), _configs("a", "b", "c"), 1)
    assert set(result["training_results"]) == {"a", "b"}
    assert "job crashed" in result["failed_sites"]["c"]


def test_when_every_datasite_fails_training__the_round_raises_a_training_error():
    sites = _InMemorySites({"a": "broken", "b": "broken"})
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(sites))
    with pytest.raises(TrainingError, match="no datasite returned a model update"):
        orch.execute_federated_round(_global(), _configs("a", "b"), 1)


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        ("http://x", "list of"),
        ([{"url": "http://x", "credentials": {}}], "lacks credentials, datasite_id"),
        ([{"url": "http://x", "credentials": "pw", "datasite_id": "a"}], "must be a dict"),
        (_configs("a") + _configs("a"), "listed twice"),
    ],
)
def test_when_site_configs_are_malformed__a_config_error_names_the_problem(sites, message):
    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(_InMemorySites({})))
    with pytest.raises(ConfigError, match=message):
        orch.execute_federated_round(_global(), sites, 1)


def test_when_the_global_model_is_not_a_model__the_round_refuses_it():
    from federation.errors import MalformedMessage

    orch = FederatedLearningOrchestrator(comm_manager=FakeStandardComm(_InMemorySites({})))
    with pytest.raises(MalformedMessage):
        orch.execute_federated_round({"w": [1, 2]}, _configs("a", "b"), 1)


def test_when_the_secure_path_runs__the_scaled_update_is_flagged_and_excluded():
    sites = _InMemorySites({"a": "honest", "b": "honest", "c": "scale"})
    comm = FakeSecureComm(sites)
    orch = FederatedLearningOrchestrator(comm_manager=comm)
    g = _global()
    result = orch.execute_federated_round(g, _configs("a", "b", "c"), 1)
    assert result["byzantine_clients"] == ["c"]
    honest = [result["training_results"][ds]["model_update"] for ds in ("a", "b")]
    for k in SHAPES:  # DP off, two clients below trimming size: their (equal-weight) mean
        torch.testing.assert_close(result["aggregated_model"][k], (honest[0][k] + honest[1][k]) / 2)
    assert result["security_metrics"]["security_metrics"]["byzantine_attacks_detected"] == 1
    assert result["reputation"]["c"] < result["reputation"]["a"] == 1.0


def test_when_no_key_is_given_and_the_environment_has_none__construction_refuses(monkeypatch):
    monkeypatch.delenv("PDMFED_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("PDMFED_DEMO", raising=False)
    with pytest.raises(ConfigError, match="PDMFED_ENCRYPTION_KEY"):
        FederatedLearningOrchestrator(use_secure_communication=True)


def test_when_the_key_comes_from_the_environment__it_seals_like_the_explicit_key(monkeypatch):
    monkeypatch.setenv("PDMFED_ENCRYPTION_KEY", PASSPHRASE)
    from_env = FederatedLearningOrchestrator(use_secure_communication=True).comm_manager
    explicit = SecurePySyftCommunicationManager(encryption_key=PASSPHRASE)
    package = from_env.encrypt_model_update(_global())
    torch.testing.assert_close(explicit.decrypt_model_update(package)["w"], _global()["w"])
    # DP is actually applied in the round: the seed's round never calls apply_differential_privacy
    assert from_env.dp_mode == "central" and from_env.differential_privacy_enabled


# --- ProductionSecureOrchestrator ------------------------------------------------------------
def _production(behaviour: dict[str, str], **cfg: Any) -> tuple[ProductionSecureOrchestrator, dict]:
    sites = _InMemorySites(behaviour)
    orch = ProductionSecureOrchestrator(
        {"encryption_key": PASSPHRASE}, comm_manager=FakeSecureComm(sites)
    )
    campaign = {
        "factory_datasites": _configs(*behaviour),
        "global_model": _global(),
        "max_rounds": 3,
        **cfg,
    }
    return orch, campaign


def test_when_every_factory_is_honest__the_campaign_runs_all_rounds_at_level_low():
    orch, campaign = _production({"a": "honest", "b": "honest", "c": "honest"})
    results = orch.execute_secure_training_campaign(campaign)
    assert len(results["rounds"]) == 3
    assert results["termination_reason"] == "max_rounds" and not results["terminated_early"]
    assert results["security_incidents"] == [] and results["byzantine_attacks"] == []
    assert results["overall_security_level"] == "low"
    # each round started from the previous aggregate
    first, second = results["rounds"][0], results["rounds"][1]
    torch.testing.assert_close(
        orch.secure_comm.sites.models["a"]["w"], results["rounds"][1]["aggregated_model"]["w"]
    )
    assert not torch.equal(first["aggregated_model"]["w"], second["aggregated_model"]["w"])


def test_when_one_factory_of_three_attacks__every_round_runs_and_the_level_is_high():
    orch, campaign = _production({"a": "honest", "b": "honest", "c": "scale"})
    results = orch.execute_secure_training_campaign(campaign)
    assert len(results["rounds"]) == 3 and not results["terminated_early"]
    assert [a["datasite_id"] for a in results["byzantine_attacks"]] == ["c", "c", "c"]
    assert [a["times_flagged"] for a in results["byzantine_attacks"]] == [1, 2, 3]
    kinds = {i["type"] for i in results["security_incidents"]}
    # two honest factories left: below min_clients=3, which the monitor also reports
    assert kinds == {"byzantine", "repeat_attacker", "small_cohort"}
    assert results["overall_security_level"] == "high"


def test_when_a_majority_of_the_cohort_is_byzantine__the_campaign_stops_at_the_first_round():
    orch, campaign = _production({"a": "honest", "b": "scale", "c": "flip"})
    results = orch.execute_secure_training_campaign(campaign)
    assert len(results["rounds"]) == 1
    assert sorted(results["rounds"][0]["byzantine_clients"]) == ["b", "c"]
    assert results["terminated_early"] and results["termination_reason"] == "critical_security"
    assert results["overall_security_level"] == "critical"
    assert results["round_security"][0]["security_level"] == "critical"


def test_when_the_datasites_go_away__the_campaign_ends_with_a_round_failed_incident():
    orch, campaign = _production({"a": "honest", "b": "down", "c": "down"})
    results = orch.execute_secure_training_campaign(campaign)
    assert results["rounds"] == []
    assert results["termination_reason"] == "round_failed"
    (incident,) = results["security_incidents"]
    assert incident["error_type"] == "InsufficientDatasitesError"
    assert results["overall_security_level"] == "high"


@pytest.mark.parametrize("bad", [{"max_rounds": 0}, {"max_rounds": "3"}, {"max_rounds": None}])
def test_when_max_rounds_is_not_a_positive_int__the_campaign_refuses_to_start(bad):
    orch, campaign = _production({"a": "honest", "b": "honest"})
    with pytest.raises(ConfigError, match="max_rounds"):
        orch.execute_secure_training_campaign({**campaign, **bad})


def test_when_a_campaign_is_summarised__pdmfed_report_renders_its_rounds(tmp_path):
    orch, campaign = _production({"a": "honest", "b": "honest", "c": "scale"}, max_rounds=2)
    results = orch.execute_secure_training_campaign(campaign)
    summary = campaign_summary(results, campaign_id="unit-c1", rmse={0: 40.5, 1: 33.25})
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    loaded = load_summary(tmp_path)
    assert [r["byzantine"] for r in loaded["rounds"]] == [["c"], ["c"]]
    assert loaded["rounds"][1]["reputation"]["c"] < loaded["rounds"][0]["reputation"]["c"] < 1.0
    assert loaded["final"] == {"rmse": 33.25, "epsilon": None, "rounds": 2, "reason": "max_rounds"}
    page = render_report(tmp_path).read_text()
    assert "unit-c1" in page and "33.25" in page  # the rounds table shows RMSE to 2 decimals


# --- diagnostics leave the manager as they found it ------------------------------------------
def test_when_security_is_validated_on_a_live_manager__its_counters_and_reputation_are_restored():
    sites = _InMemorySites({"a": "honest", "b": "honest", "c": "scale"})
    comm = FakeSecureComm(sites, enable_dp=True, noise_multiplier=0.5, dp_mode="central")
    FederatedLearningOrchestrator(comm_manager=comm).execute_federated_round(
        _global(), _configs("a", "b", "c"), 1
    )
    before = comm.get_security_metrics()
    reputations = comm.get_client_reputation_report()["client_reputations"]
    result = validate_security_configuration(comm)
    assert (
        result["encryption"],
        result["differential_privacy"],
        result["byzantine_tolerance"],
    ) == ("working", "working", "working")
    after = comm.get_security_metrics()
    for key in (
        "encrypted_messages",
        "security_violations",
        "dp_noise_applications",
        "byzantine_attacks_detected",
        "epsilon_spent",
    ):
        assert after["security_metrics"][key] == before["security_metrics"][key], key
    assert comm.get_client_reputation_report()["client_reputations"] == reputations
    assert "outlier" not in reputations
