"""trainer-dispatch's round 0: it merges the screened statistics robustly and records their DP spend."""

from __future__ import annotations

import os

import numpy as np
from federation.campaign import CampaignConfig
from federation.datasite.job import feature_columns
from federation.ml.fedstats import SensorStats
from federation.privacy.stats_dp import StatsNoise, noisy_row_stats, stats_epsilon
from federation.runtime.service import ServiceRunner
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.messages import CampaignStart, StatsPrivacy, StatsRejected
from test_services_campaign_answer import _Endpoint, _Envelope

from services.trainer_dispatch.handlers import build_service

COLS = feature_columns(4)
BOUNDS = [[0.0, 100.0]] * 4


def _rows(seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(50.0 + shift, 5.0, size=(3000, 4)).astype(np.float32)


async def _dispatch(stats: dict[str, SensorStats], refused: tuple[str, ...] = (), **overrides):
    """Start a campaign of f1..f3, feed their screened statistics and security's refusals of
    ``refused``; return its store and what it published."""
    cfg = CampaignConfig.model_validate({
        "campaign_id": "r0", "datasites": ["f1", "f2", "f3"], "rounds": 2, "quorum": 2,
        "training": {"model_type": "cnn", "epochs": 1, "n_features": 4, "window": 8},
        "privacy": {"enabled": False}, **overrides,
    })  # fmt: skip
    store, endpoint = SqliteStore(), _Endpoint()
    runner = ServiceRunner(build_service(), endpoint, store)
    start = CampaignStart("r0", cfg.to_payload(), "s-1").to_payload()
    await runner._on_message("campaign.start", start, _Envelope(os.urandom(16)))
    for ds, s in stats.items():
        payload = {"campaign_id": "r0", "round_num": 0, "datasite_id": ds, "stats": s.to_dict(),
                   "attempt": 1}  # fmt: skip
        await runner._on_message("stats.screened", payload, _Envelope(os.urandom(16)))
    for ds in refused:
        payload = StatsRejected("r0", 0, ds, "invalid_stats", "negative variance", 1).to_payload()
        await runner._on_message("stats.rejected", payload, _Envelope(os.urandom(16)))
    return store, endpoint


async def _round0(
    stats: dict[str, SensorStats], refused: tuple[str, ...] = (), **overrides
) -> dict:
    """Round 0 of f1..f3 to its end (round 1 opened, no deadline passed): the stored record."""
    store, endpoint = await _dispatch(stats, refused, **overrides)
    (opened,) = endpoint.of("round.open")
    camp = store.read("campaign/r0")
    assert opened["normalizer"] == camp["normalizer"]
    return {**camp, "round.open": opened}


async def test_when_one_factory_lies__round_0_leaves_it_out_and_says_why():
    stats = {ds: SensorStats.of_rows(_rows(i), COLS) for i, ds in enumerate(("f1", "f2"))}
    stats["f3"] = SensorStats.of_rows(_rows(3, shift=1e6), COLS)
    camp = await _round0(stats)
    assert camp["normalizer_from"] == ["f1", "f2"] and list(camp["normalizer_rejected"]) == ["f3"]
    assert max(camp["normalizer"]["mean"][0]) < 60
    assert "stats_privacy" not in camp  # exact statistics: nothing spent
    assert StatsPrivacy.from_payload(camp["round.open"]["normalizer_privacy"]) == StatsPrivacy(
        False
    )


async def test_when_the_campaign_noises_round_0__the_epsilon_spent_is_recorded():
    overrides = {"stats_privacy": {"enabled": True, "epsilon": 2.0, "bounds": BOUNDS}}
    z = CampaignConfig.model_validate({"training": {"n_features": 4}, **overrides}
                                      ).stats_privacy.noise_multiplier()  # fmt: skip
    mech = StatsNoise(z, tuple(map(tuple, BOUNDS)))
    rng = np.random.default_rng(0)
    stats = {
        ds: noisy_row_stats(_rows(i), COLS, mech, rng) for i, ds in enumerate(("f1", "f2", "f3"))
    }
    camp = await _round0(stats, **overrides)
    spent = camp["stats_privacy"]
    assert spent["epsilon"] == stats_epsilon(z, 1e-5) and abs(spent["epsilon"] - 2.0) < 0.01
    assert spent["delta"] == 1e-5 and "row-level" in spent["scope"]
    assert camp["normalizer_rejected"] == {}
    released = StatsPrivacy.from_payload(camp["round.open"]["normalizer_privacy"])
    assert released == StatsPrivacy(noised=True, **spent)  # on to the bundle and the report
    np.testing.assert_allclose(camp["normalizer"]["mean"][0], 50.0, atol=1.0)


async def test_when_security_refuses_a_factorys_statistics__round_0_closes_without_waiting_for_it():
    stats = {ds: SensorStats.of_rows(_rows(i), COLS) for i, ds in enumerate(("f1", "f2"))}
    camp = await _round0(stats, refused=("f3",))  # the deadline (60 s) is far: no tick ran
    assert camp["normalizer_from"] == ["f1", "f2"]
    assert camp["normalizer_rejected"] == {"f3": "invalid_stats: negative variance"}
    assert camp["round.open"]["round_num"] == 1


async def test_when_security_refuses_too_many_statistics__round_0_ends_the_campaign_no_quorum_at_once():
    store, endpoint = await _dispatch(
        {"f1": SensorStats.of_rows(_rows(0), COLS)}, refused=("f2", "f3")
    )
    assert endpoint.of("round.open") == [] and endpoint.of("train.request") == []
    (done,) = endpoint.of("campaign.completed")
    assert done["reason"] == "no_quorum" and done["rounds"] == 0
    assert set(store.read("campaign/r0")["normalizer_rejected"]) == {"f2", "f3"}


async def test_a_refusal_of_a_superseded_attempt_or_of_a_stranger_changes_nothing():
    store, endpoint = await _dispatch({"f1": SensorStats.of_rows(_rows(0), COLS)})
    runner = ServiceRunner(build_service(), endpoint, store)
    for ds, attempt in (("f2", 2), ("f9", 1)):
        payload = StatsRejected("r0", 0, ds, "auth", "bad signature", attempt).to_payload()
        await runner._on_message("stats.rejected", payload, _Envelope(os.urandom(16)))
    assert store.read("round/r0/000000")["failed"] == {}
    assert endpoint.of("round.open") == [] and endpoint.of("campaign.completed") == []


def test_the_connector_asks_a_datasite_for_noise_only_as_its_campaign_says_and_never_blind():
    import pytest
    from federation.datasite_registry import DatasiteRegistry

    from services.connector.handlers import ConnectorLogic

    logic = ConnectorLogic(comm_manager=None, registry=DatasiteRegistry({}))
    logic.store = SqliteStore()
    with pytest.raises(RuntimeError, match="has not reached the connector"):
        logic.stats_config("r0")  # unknown yet: whether to noise is unknown, so nothing runs
    noisy = {"training": {"n_features": 4}, "stats_privacy": {"enabled": True, "bounds": BOUNDS}}
    with logic.store.transaction() as tx:
        tx.put("campaign/r0", CampaignConfig.model_validate({"campaign_id": "r0"}).to_payload())
        tx.put(
            "campaign/r1",
            CampaignConfig.model_validate({"campaign_id": "r1", **noisy}).to_payload(),
        )
    assert logic.stats_config("r0") == {"campaign_id": "r0"}
    cfg = logic.stats_config("r1")
    assert (
        cfg["noise"]["bounds"] == BOUNDS
        and stats_epsilon(cfg["noise"]["noise_multiplier"], 1e-5) < 1.001
    )
