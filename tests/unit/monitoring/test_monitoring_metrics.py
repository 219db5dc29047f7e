"""The pdmfed_* metrics contract, checked by scraping a HealthServer over HTTP."""

from __future__ import annotations

import urllib.request

import pytest
from federation.errors import REJECT_REASONS
from federation.monitoring import HealthServer, Metrics
from federation.monitoring.metrics import MESSAGE_TYPES
from federation.runtime.observe import observe_campaign, observe_emitted
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

# The exported metrics, sample name -> label names (histograms: the _count sample).
CONTRACT = {
    "pdmfed_messages_consumed_total": {"service", "msg_type"},
    "pdmfed_messages_published_total": {"service", "msg_type"},
    "pdmfed_messages_rejected_total": {"service", "reason"},
    "pdmfed_message_bytes_total": {"service", "direction"},
    "pdmfed_handler_seconds_count": {"service", "msg_type"},
    "pdmfed_round": {"campaign"},
    "pdmfed_round_opened_timestamp_seconds": {"campaign"},
    "pdmfed_round_duration_seconds_count": {"campaign"},
    "pdmfed_round_deadline_seconds": {"campaign"},
    "pdmfed_campaign_running": {"campaign"},
    "pdmfed_datasites_connected": {"campaign"},
    "pdmfed_datasites_expected": {"campaign"},
    "pdmfed_byzantine_detected_total": {"campaign", "datasite_id"},
    "pdmfed_client_reputation": {"campaign", "datasite_id"},
    "pdmfed_dp_epsilon": {"campaign", "level"},
    "pdmfed_dp_max_epsilon": {"campaign", "level"},
    "pdmfed_dp_noise_applications_total": {"campaign"},
    "pdmfed_updates_aggregated_total": {"campaign"},
    "pdmfed_train_rmse": {"campaign"},
    "pdmfed_reassembly_refusals_total": {"service", "sender", "reason"},
    "pdmfed_datasite_refusals_total": {"service", "reason"},
    "pdmfed_rounds_failed_total": {"reason"},
}


def _campaign(**overrides):
    from federation.campaign import CampaignConfig

    base = {
        "campaign_id": "c1",
        "datasites": [f"factory_{x}" for x in "abc"],
        "rounds": 5,
        "round_timeout_s": 90,
        "privacy": {"enabled": True, "mode": "central", "max_epsilon": 8.0},
        "record_privacy": {"enabled": True, "max_epsilon": 3.0},
        "robustness": {"enabled": False},
    }
    base.update(overrides)
    return CampaignConfig.model_validate(base)


def _scrape(registry: CollectorRegistry) -> list:
    with HealthServer(0, registry, ready=lambda: True, host="127.0.0.1") as server:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as resp:
            assert resp.status == 200
            text = resp.read().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def _value(samples, name: str, **labels: str) -> float:
    hits = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def test_when_a_service_has_seen_traffic__every_contract_metric_has_exactly_its_labels(registry):
    m = Metrics("security", registry)
    m.register_datasites(["factory_a"], "c1")
    m.set_reputations({"factory_a": 0.9}, "c1")
    m.set_connections("c1", 2, 3)
    m.reassembly_refusals.labels(service="security", sender="connector", reason="budget").inc()
    observe_campaign(m, _campaign(), running=True, round_num=1, round_opened_at=1.0)
    observe_emitted(
        m,
        "round.completed",
        {
            "campaign_id": "c1",
            "round_num": 1,
            "participants": ["factory_a"],
            "epsilon": 0.5,
            "metrics": {"duration_s": 3.0, "rmse": 20.0, "noise_std": 0.1},
        },
    )
    samples = _scrape(registry)
    seen = {}
    for s in samples:
        if s.name.startswith("pdmfed_") and not s.name.endswith(("_created", "_bucket", "_sum")):
            seen.setdefault(s.name, set()).add(frozenset(s.labels))
    assert set(seen) == set(CONTRACT)
    for name, labels in CONTRACT.items():
        assert seen[name] == {frozenset(labels)}, name


def test_when_metrics_are_created__every_reject_reason_of_the_service_is_zero(registry):
    Metrics("aggregator", registry)
    samples = _scrape(registry)
    for reason in REJECT_REASONS:
        assert (
            _value(samples, "pdmfed_messages_rejected_total", service="aggregator", reason=reason)
            == 0.0
        )
    for msg_type in MESSAGE_TYPES:
        assert (
            _value(
                samples, "pdmfed_messages_consumed_total", service="aggregator", msg_type=msg_type
            )
            == 0.0
        )


def test_when_events_are_counted__the_scrape_shows_their_values(registry):
    m = Metrics("connector", registry)
    m.consumed("train.request", nbytes=100)
    m.consumed("train.request", nbytes=50)
    m.published("update.raw", nbytes=4096)
    m.rejected("replay")
    m.rejected("replay")
    m.rejected("integrity")
    with m.time_handler("train.request"):
        pass
    m.round.labels(campaign="c1").set(7)
    m.dp_epsilon.labels(campaign="c1", level="client").set(1.25)
    m.byzantine_detected.labels(campaign="c1", datasite_id="factory_b").inc(3)
    samples = _scrape(registry)
    assert (
        _value(
            samples, "pdmfed_messages_consumed_total", service="connector", msg_type="train.request"
        )
        == 2
    )
    assert _value(samples, "pdmfed_message_bytes_total", service="connector", direction="in") == 150
    assert (
        _value(samples, "pdmfed_message_bytes_total", service="connector", direction="out") == 4096
    )
    assert (
        _value(samples, "pdmfed_messages_rejected_total", service="connector", reason="replay") == 2
    )
    assert (
        _value(samples, "pdmfed_messages_rejected_total", service="connector", reason="integrity")
        == 1
    )
    assert (
        _value(
            samples, "pdmfed_handler_seconds_count", service="connector", msg_type="train.request"
        )
        == 1
    )
    assert _value(samples, "pdmfed_round", campaign="c1") == 7
    assert _value(samples, "pdmfed_dp_epsilon", campaign="c1", level="client") == 1.25
    assert (
        _value(samples, "pdmfed_byzantine_detected_total", campaign="c1", datasite_id="factory_b")
        == 3
    )


def test_when_two_services_share_one_registry__each_keeps_its_own_series(registry):
    a = Metrics("security", registry)
    b = Metrics("aggregator", registry)
    a.rejected("auth")
    b.consumed("update.screened")
    assert a.messages_rejected is b.messages_rejected
    samples = _scrape(registry)
    assert _value(samples, "pdmfed_messages_rejected_total", service="security", reason="auth") == 1
    assert (
        _value(samples, "pdmfed_messages_rejected_total", service="aggregator", reason="auth") == 0
    )
    assert (
        _value(
            samples,
            "pdmfed_messages_consumed_total",
            service="aggregator",
            msg_type="update.screened",
        )
        == 1
    )


def test_when_service_name_is_empty__metrics_refuse_it(registry):
    with pytest.raises(ValueError):
        Metrics("", registry)
