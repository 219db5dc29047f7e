"""Federated normalisation over two real PySyft datasites: round 0's statistics equal the union's."""

from __future__ import annotations

import numpy as np
import pytest
from datasite_helpers import N_FEATURES, WINDOW
from federation.communication import PySyftCommunicationManager
from federation.crypto.signing import TrustStore
from federation.datasite.job import feature_columns
from federation.datasite.signing import verify_stats_signature
from federation.errors import AuthError
from federation.ml.fedstats import SensorStats, merge_stats, window_stats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _trust(two_sites) -> TrustStore:
    return TrustStore({ds: site.handle.public_key for ds, site in two_sites.items()})


def _central(two_sites) -> SensorStats:
    union = np.concatenate([site.partition["X"] for site in two_sites.values()])
    return window_stats(union, feature_columns(N_FEATURES))


def test_the_statistics_jobs_results_merge_to_exactly_the_union_statistics(two_sites):
    comm = PySyftCommunicationManager(approval_timeout_s=30, training_timeout_s=120,
                                      factory_trust=_trust(two_sites))  # fmt: skip
    try:
        results = {}
        for ds, site in two_sites.items():
            assert comm.connect_to_datasite(site.handle.url, site.credentials)
            results[ds] = comm.request_stats({"campaign_id": "fednorm-it"}, ds)
            assert "error" not in results[ds], results[ds].get("error")
        # the campaign's DP on round 0: the same approved job noises at the datasite and signs
        ds = next(iter(two_sites))
        noise = {"noise_multiplier": 1.0, "bounds": [[-50.0, 50.0]] * N_FEATURES}
        noisy = comm.request_stats({"campaign_id": "fednorm-it", "noise": noise}, ds)
        assert "error" not in noisy, noisy.get("error")
    finally:
        comm.cleanup_all_connections()
    merged = merge_stats(SensorStats.from_dict(r["stats"]) for r in results.values())
    assert merged == _central(two_sites)
    assert merged.count == sum(s.partition["X"].size // N_FEATURES for s in two_sites.values())
    verify_stats_signature(noisy, _trust(two_sites))
    released = SensorStats.from_dict(noisy["stats"])  # passes security's checks
    assert released != SensorStats.from_dict(results[ds]["stats"])
    assert (
        abs(released.count - SensorStats.from_dict(results[ds]["stats"]).count) < 30
    )  # z sqrt(1+2F)
    first = next(iter(results.values()))
    verify_stats_signature(first, _trust(two_sites))
    with pytest.raises(AuthError):  # moved to another campaign, the signature no longer holds
        verify_stats_signature({**first, "campaign_id": "another"}, _trust(two_sites))


async def test_a_campaigns_round_0_ships_the_central_statistics_of_the_union(two_sites, tmp_path):
    from federation.campaign import CampaignConfig
    from federation.config import Settings
    from federation.datasite_registry import DatasiteRegistry, write_registry
    from federation.orchestrator.embedded import EmbeddedFederation
    from federation.runtime.launch import connector_session_manager

    sites = {ds: (s.handle.url, s.credentials["email"], s.credentials["password"])
             for ds, s in two_sites.items()}  # fmt: skip
    settings = Settings(demo=True, state_dir=tmp_path / "state", amqp_url=None, redis_url=None)
    comm = connector_session_manager(approval_timeout_s=30, training_timeout_s=120)
    fed = EmbeddedFederation(
        settings,
        comm_manager=comm,
        datasite_registry=DatasiteRegistry.load(write_registry(tmp_path / "registry", sites)),
        factory_trust=_trust(two_sites),
    )
    cfg = CampaignConfig.model_validate({
        "campaign_id": "fednorm-campaign", "datasites": list(two_sites), "rounds": 1,
        "round_timeout_s": 300, "quorum": 2, "seed": 4,
        "training": {"model_type": "cnn", "epochs": 1, "batch_size": 16, "learning_rate": 0.01,
                     "n_features": N_FEATURES, "window": WINDOW},
        "privacy": {"enabled": False}, "robustness": {"enabled": False},
    })  # fmt: skip
    await fed.start()
    try:
        rec = await fed.run_campaign(cfg, timeout=500)
    finally:
        await fed.stop()
        comm.cleanup_all_connections()
    assert rec.completed["reason"] == "max_rounds", rec.completed
    assert rec.normalizer == _central(two_sites).normalizer().to_dict()
    assert rec.normalizer_privacy["noised"] is False  # stated on the wire: exact statistics
    assert sorted(rec.rounds[0]["participants"]) == sorted(two_sites)
