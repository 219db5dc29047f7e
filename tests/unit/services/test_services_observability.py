"""What the services export about a campaign: sessions, lifecycle, budgets, all labelled by campaign."""

from __future__ import annotations

import asyncio

import pytest
from federation.campaign import CampaignConfig
from federation.config import Settings
from federation.monitoring import Metrics
from federation.orchestrator.embedded import EmbeddedFederation
from prometheus_client import CollectorRegistry
from services_helpers import LocalDatasites, local_registry

from services.connector.handlers import ConnectorLogic


def _cfg(data, ids, campaign_id="unit-observe", **kw) -> CampaignConfig:
    base = dict(
        campaign_id=campaign_id,
        datasites=list(ids),
        rounds=2,
        round_timeout_s=45,
        quorum=2,
        training={
            "model_type": "cnn",
            "epochs": 1,
            "batch_size": 64,
            "n_features": data.n_features,
            "window": data.window,
            "learning_rate": 0.005,
        },
        privacy={
            "enabled": True,
            "mode": "central",
            "noise_multiplier": 0.5,
            "clip_norm": 5.0,
            "max_epsilon": 50.0,
        },
        robustness={"enabled": True, "aggregation": "trimmed_mean"},
    )
    base.update(kw)
    return CampaignConfig.model_validate(base)


def _value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PDMFED_DATASITE_ADMIN_PASSWORD", "unit-test-password")
    monkeypatch.setattr(ConnectorLogic, "session_check_s", 0.05)
    return Settings(demo=True, state_dir=tmp_path / "state", amqp_url=None, redis_url=None)


def test_the_connector_counts_a_campaigns_live_sessions_and_drops_a_silent_datasite(
    tiny_partitions, tmp_path
):
    data, parts = tiny_partitions
    comm = LocalDatasites(parts)
    logic = ConnectorLogic(comm, local_registry(tmp_path, parts))
    registry = CollectorRegistry()
    metrics = Metrics("connector", registry)
    logic.remember_datasites(_cfg(data, list(parts)))
    logic.export_sessions(metrics, logic.check_sessions())  # logs in to every named datasite
    assert comm.connected == set(parts)
    assert _value(registry, "pdmfed_datasites_connected", campaign="unit-observe") == 3
    assert _value(registry, "pdmfed_datasites_expected", campaign="unit-observe") == 3

    comm.down.add("factory_b")
    logic.export_sessions(metrics, logic.check_sessions())
    assert _value(registry, "pdmfed_datasites_connected", campaign="unit-observe") == 2
    comm.down.clear()
    logic.export_sessions(metrics, logic.check_sessions())  # it answers again: logged in again
    assert _value(registry, "pdmfed_datasites_connected", campaign="unit-observe") == 3

    logic.forget_campaign("unit-observe")
    logic.export_sessions(metrics, logic.check_sessions())
    assert _value(registry, "pdmfed_datasites_connected", campaign="unit-observe") is None
    assert comm.connected == set()  # no running campaign names them: logged out


def test_a_datasite_without_its_password_is_not_counted_connected(tiny_partitions, tmp_path):
    data, parts = tiny_partitions
    comm = LocalDatasites(parts)
    registry = local_registry(tmp_path, parts)
    for ds in parts:
        registry.get(ds).password_file.write_text("")  # emptied after the connector started
    logic = ConnectorLogic(comm, registry)
    logic.remember_datasites(_cfg(data, list(parts)))
    assert logic.check_sessions() == {"unit-observe": (0, 3)}


async def test_a_campaign_is_exported_running_with_its_budget_and_deadline_then_finished(
    settings, tiny_partitions
):
    data, parts = tiny_partitions
    registry = CollectorRegistry()
    fed = EmbeddedFederation(
        settings,
        comm_manager=LocalDatasites(parts),
        registry=registry,
        datasite_registry=local_registry(settings.state_dir / "registry", parts),
    )
    await fed.start()
    cfg = _cfg(data, list(parts), record_privacy={"enabled": True, "max_epsilon": 40.0})
    try:
        task = asyncio.create_task(fed.run_campaign(cfg, timeout=60))
        running = None
        for _ in range(400):
            running = _value(registry, "pdmfed_campaign_running", campaign=cfg.campaign_id)
            connected = _value(registry, "pdmfed_datasites_connected", campaign=cfg.campaign_id)
            if running == 1 and connected == 3:
                break
            await asyncio.sleep(0.05)
        assert (running, connected) == (1, 3)
        rec = await task
        await asyncio.sleep(0.3)  # the connector's next session check after campaign.completed
    finally:
        await fed.stop()
    assert rec.completed["reason"] == "max_rounds"
    c = {"campaign": cfg.campaign_id}
    assert _value(registry, "pdmfed_campaign_running", **c) == 0
    assert _value(registry, "pdmfed_round", **c) == 2
    assert _value(registry, "pdmfed_round_deadline_seconds", **c) == 45
    assert _value(registry, "pdmfed_dp_max_epsilon", **c, level="client") == 50
    assert _value(registry, "pdmfed_dp_max_epsilon", **c, level="record") == 40
    assert _value(registry, "pdmfed_dp_epsilon", **c, level="client") == pytest.approx(
        rec.rounds[-1]["epsilon"]
    )
    assert _value(registry, "pdmfed_train_rmse", **c) == pytest.approx(
        rec.rounds[-1]["metrics"]["rmse"]
    )
    assert _value(registry, "pdmfed_round_opened_timestamp_seconds", **c) > 0
    assert _value(registry, "pdmfed_updates_aggregated_total", **c) == sum(
        len(r["participants"]) for r in rec.rounds
    )
    # the connector logged out of the finished campaign and dropped its session series
    assert _value(registry, "pdmfed_datasites_connected", **c) is None
