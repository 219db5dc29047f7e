"""Attacker side: a round never publishes a model built from too few screened updates."""

from __future__ import annotations

import asyncio

import pytest
import torch
from federation.campaign import CampaignConfig
from federation.config import Settings
from federation.orchestrator.embedded import EmbeddedFederation
from federation.robust.attacks import scaling
from services_helpers import LocalDatasites, local_registry
from test_services_defence import CID, _cfg, _Driven, _open

from services.aggregator.handlers import build_service as build_aggregator
from services.security.handlers import build_service as build_security


def test_when_one_malicious_update_is_all_that_arrives__security_passes_nothing_unscreened_and_no_model_is_published():
    cfg = _cfg(privacy={"enabled": False}, robustness={"min_clients": 3}, quorum=2)
    sec, agg = _Driven(build_security()), _Driven(build_aggregator())
    sec.handle("campaign.start", {"campaign_id": CID, "config": cfg.to_payload()})
    base = {"w": torch.zeros(50)}
    _open(agg, cfg, base)
    evil = scaling({"w": torch.ones(50)}, 1e4)
    sec.handle(
        "update.raw",
        {
            "campaign_id": CID,
            "round_num": 1,
            "datasite_id": "evil",
            "model_version": 0,
            "delta": evil,
            "num_samples": 10,
            "metrics": {},
        },
    )
    close = {
        "campaign_id": CID,
        "round_num": 1,
        "expected": ["evil"],
        "failed": {"f1": "deadline", "f2": "deadline"},
    }
    sec.handle("round.close", close)
    agg.handle("round.close", close)
    assert sec.take("update.screened") == []
    (rej,) = sec.take("update.rejected")
    assert rej["reason"] == "unscreened"
    assert "1 update" in rej["detail"]["why"][0] and "min_clients 3" in rej["detail"]["why"][0]
    agg.handle("update.rejected", rej)
    (done,) = agg.take("round.completed")
    assert done["status"] == "no_quorum"
    assert done["model_version"] == 0 and not done["global_model"]  # nothing published
    assert done["metrics"]["quorum"] == {
        "required": 2,
        "accepted": 0,
        "screened": 0,
        "min_clients": 3,
    }


def test_when_too_few_updates_survive_screening__the_round_is_below_quorum_even_if_screened():
    cfg = _cfg(privacy={"enabled": False}, robustness={"min_clients": 3}, quorum=3)
    agg = _Driven(build_aggregator())
    _open(agg, cfg, {"w": torch.zeros(5)})
    ids = ["a", "b", "c"]
    agg.handle("round.close", {"campaign_id": CID, "round_num": 1, "expected": ids, "failed": {}})
    for ds in ids[:2]:
        agg.handle(
            "update.screened",
            {
                "campaign_id": CID,
                "round_num": 1,
                "datasite_id": ds,
                "model_version": 0,
                "delta": {"w": torch.ones(5)},
                "num_samples": 5,
                "weight": 5.0,
                "metrics": {},
                "verdict": {"accepted": True},
            },
        )
    agg.handle(
        "update.rejected",
        {
            "campaign_id": CID,
            "round_num": 1,
            "datasite_id": "c",
            "reason": "byzantine",
            "detail": {},
        },
    )
    (done,) = agg.take("round.completed")
    assert done["status"] == "no_quorum" and not done["global_model"]
    assert done["metrics"]["quorum"] == {
        "required": 3,
        "accepted": 2,
        "screened": 3,
        "min_clients": 3,
    }


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PDMFED_DATASITE_ADMIN_PASSWORD", "unit-test-password")
    return Settings(demo=True, state_dir=tmp_path / "state", amqp_url=None, redis_url=None)


async def test_when_only_the_compromised_factory_answers__the_campaign_stops_without_publishing_its_model(
    settings, tiny_partitions
):
    data, parts = tiny_partitions
    comm = LocalDatasites(parts, attack={"factory_c": 50.0})
    comm.fail_next.update({"factory_a": 10, "factory_b": 10})
    cfg = CampaignConfig.model_validate(
        dict(
            campaign_id="unit-quorum",
            datasites=list(parts),
            rounds=3,
            round_timeout_s=60,
            quorum=2,
            max_retries=0,
            training={
                "model_type": "cnn",
                "epochs": 1,
                "batch_size": 64,
                "n_features": data.n_features,
                "window": data.window,
                "max_batches": 2,
            },
            privacy={"enabled": False},
            robustness={"min_clients": 3},
        )
    )
    fed = EmbeddedFederation(
        settings,
        comm_manager=comm,
        datasite_registry=local_registry(settings.state_dir / "registry", parts),
    )
    await fed.start()
    try:
        rec = await fed.run_campaign(cfg, timeout=120)
        for _ in range(100):  # counted once the aggregator's publish returned, maybe after the end
            failed = fed.registry.get_sample_value(
                "pdmfed_rounds_failed_total", {"reason": "no_quorum"}
            )
            if failed:
                break
            await asyncio.sleep(0.1)
    finally:
        await fed.stop()
    assert rec.completed["reason"] == "no_quorum"
    (r,) = rec.rounds
    assert r["status"] == "no_quorum" and r["participants"] == []
    assert r["rejected"] == {"factory_c": "unscreened"}
    assert rec.final_model is None  # the compromised factory's update never became a model
    assert failed == 1
