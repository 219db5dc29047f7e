"""The monitors, computed from given numbers (values, not just keys)."""

from __future__ import annotations

import pytest
from federation.monitoring import (
    CommunicationMonitor,
    Metrics,
    SecurityMetricsDashboard,
    SecurityMonitor,
)


# --- CommunicationMonitor ------------------------------------------------------------------
def test_when_two_of_three_datasites_are_connected__the_report_counts_them(fake_comm, registry):
    comm = fake_comm({"a": "connected", "b": "connected", "c": "disconnected"})
    metrics = Metrics("connector", registry)
    report = CommunicationMonitor(comm, metrics=metrics).monitor_datasite_connectivity()
    assert report["total_datasites"] == 3
    assert report["connected_datasites"] == 2
    assert report["disconnected_datasites"] == 1
    assert report["connection_details"] == {"a": "connected", "b": "connected", "c": "disconnected"}
    assert registry.get_sample_value("pdmfed_datasites_connected", {"campaign": "default"}) == 2
    assert registry.get_sample_value("pdmfed_datasites_expected", {"campaign": "default"}) == 3


def test_when_more_than_100_reports_are_taken__only_the_last_100_are_kept(fake_comm):
    comm = fake_comm({"a": "connected"})
    monitor = CommunicationMonitor(comm)
    for _ in range(105):
        monitor.monitor_datasite_connectivity()
    assert len(monitor.connection_history) == 100


def test_when_connectivity_flaps__diagnosis_reports_rate_drops_and_advice(fake_comm):
    comm = fake_comm()
    monitor = CommunicationMonitor(comm)
    # 4 datasites; connected counts over 10 reports: 4,2,4,2,... -> average 3, 5 drops.
    for i in range(10):
        up = 4 if i % 2 == 0 else 2
        comm.statuses = {f"s{j}": "connected" if j < up else "disconnected" for j in range(4)}
        monitor.monitor_datasite_connectivity()
    d = monitor.diagnose_connectivity_issues()
    assert d["avg_connected_datasites"] == pytest.approx(3.0)
    assert d["connectivity_rate"] == pytest.approx(0.75)
    assert d["disconnection_events"] == 5
    assert d["status"] == "degraded"
    assert d["currently_disconnected"] == ["s2", "s3"]
    text = " ".join(d["recommendations"])
    assert "Moderate connectivity" in text
    assert "Frequent disconnection" in text
    assert "Low connectivity" not in text


def test_when_everything_is_connected__diagnosis_is_healthy_with_no_advice(fake_comm):
    monitor = CommunicationMonitor(fake_comm({"a": "connected", "b": "connected"}))
    for _ in range(3):
        monitor.monitor_datasite_connectivity()
    d = monitor.diagnose_connectivity_issues()
    assert d["connectivity_rate"] == 1.0
    assert d["disconnection_events"] == 0
    assert d["status"] == "healthy"
    assert d["recommendations"] == []


def test_when_nothing_was_monitored__diagnosis_says_no_data(fake_comm):
    d = CommunicationMonitor(fake_comm()).diagnose_connectivity_issues()
    assert d == {"status": "no_data", "recommendations": []}


# --- SecurityMetricsDashboard ----------------------------------------------------------------
class _Manager:
    def __init__(self, metrics, reputations=None):
        self._metrics = metrics
        self._reputations = reputations

    def get_security_metrics(self):
        return self._metrics

    def get_client_reputation_report(self):
        return {"client_reputations": self._reputations or {}}


def test_when_metrics_are_given__health_scores_follow_the_seed_formulas(make_security_metrics):
    m = make_security_metrics(
        noise_multiplier=1.5,
        inner={
            "encrypted_messages": 30,
            "authentication_checks": 10,
            "security_violations": 2,
            "dp_noise_applications": 5,
            "byzantine_attacks_detected": 3,
            "clients_filtered": 4,
        },
    )
    dash = SecurityMetricsDashboard(_Manager(m)).generate_security_dashboard()
    assert dash["encryption_metrics"]["health_score"] == pytest.approx(1 - 2 / 40)
    assert dash["encryption_metrics"]["security_violations"] == 2
    assert dash["privacy_metrics"]["health_score"] == pytest.approx((1.5 / 2 + 1.0) / 2)
    assert dash["privacy_metrics"]["privacy_level"] == "high"
    assert dash["byzantine_tolerance_metrics"]["health_score"] == pytest.approx(0.7)
    assert dash["byzantine_tolerance_metrics"]["attacks_detected"] == 3
    assert dash["security_overview"]["overall_security_level"] == "high"


def test_when_dp_and_bft_are_off__their_scores_are_neutral_and_advice_says_enable(
    make_security_metrics,
):
    m = make_security_metrics(
        differential_privacy_enabled=False,
        byzantine_fault_tolerance_enabled=False,
        noise_multiplier=1.0,
        inner={"encrypted_messages": 10},
    )
    dash = SecurityMetricsDashboard(_Manager(m)).generate_security_dashboard()
    assert dash["privacy_metrics"]["health_score"] == 0.5
    assert dash["byzantine_tolerance_metrics"]["health_score"] == 0.5
    assert dash["privacy_metrics"]["privacy_level"] == "medium"
    recs = "\n".join(dash["recommendations"])
    assert "Differential privacy is off" in recs
    assert "Byzantine fault tolerance is off" in recs


def test_when_violations_budget_and_reputation_are_bad__each_gets_a_recommendation(
    make_security_metrics,
):
    m = make_security_metrics(
        epsilon=7.0,
        max_epsilon=8.0,
        inner={"encrypted_messages": 50, "security_violations": 3, "dp_noise_applications": 9},
    )
    reps = {"factory_ok": 0.95, "factory_bad": 0.12}
    dash = SecurityMetricsDashboard(_Manager(m, reps)).generate_security_dashboard()
    recs = dash["recommendations"]
    assert any("3 security violation" in r and "key" in r and "replay" in r for r in recs)
    assert any("88%" in r and "noise multiplier" in r for r in recs)
    assert any("factory_bad" in r and "0.12" in r for r in recs)
    assert not any("factory_ok" in r for r in recs)
    assert dash["privacy_metrics"]["epsilon"] == 7.0


def test_when_all_is_healthy__there_are_no_recommendations(make_security_metrics):
    m = make_security_metrics(
        noise_multiplier=1.2,
        epsilon=1.0,
        max_epsilon=8.0,
        inner={"encrypted_messages": 20, "authentication_checks": 20, "dp_noise_applications": 4},
    )
    dash = SecurityMetricsDashboard(_Manager(m, {"a": 0.9})).generate_security_dashboard()
    assert dash["recommendations"] == []
    assert dash["encryption_metrics"]["health_score"] == 1.0


def test_when_no_traffic_was_seen__encryption_health_is_zero_and_explained(make_security_metrics):
    dash = SecurityMetricsDashboard(_Manager(make_security_metrics())).generate_security_dashboard()
    assert dash["encryption_metrics"]["health_score"] == 0.0
    assert any("No encrypted traffic" in r for r in dash["recommendations"])


# --- SecurityMonitor -------------------------------------------------------------------------
def _round(n, sites, byz=(), rejected=None, violations=0, make=None):
    return {
        "round_num": n,
        "participating_sites": list(sites),
        "byzantine_clients": list(byz),
        "rejected": rejected or {},
        "security_metrics": make(inner={"security_violations": violations}) if make else None,
    }


def test_when_a_round_is_clean__its_level_is_low(make_security_metrics):
    mon = SecurityMonitor(None, min_clients=2)
    s = mon.assess_round_security(_round(0, "abcd", make=make_security_metrics))
    assert s["security_level"] == "low"
    assert s["incidents"] == []
    assert s["byzantine_attacks"] == []


def test_when_one_of_five_is_byzantine__the_level_is_medium_and_the_attack_is_named():
    mon = SecurityMonitor(None, min_clients=2)
    s = mon.assess_round_security(_round(1, "abcde", byz=["e"]))
    assert s["security_level"] == "medium"
    assert s["byzantine_attacks"] == [{"round_num": 1, "datasite_id": "e", "times_flagged": 1}]
    assert s["incidents"][0]["fraction"] == pytest.approx(0.2)


def test_when_a_third_is_byzantine__the_level_is_high():
    s = SecurityMonitor(None, min_clients=2).assess_round_security(_round(1, "abc", byz=["c"]))
    assert s["security_level"] == "high"


def test_when_a_majority_is_byzantine__the_level_is_critical():
    s = SecurityMonitor(None, min_clients=1).assess_round_security(
        _round(1, "abcde", byz=["c", "d", "e"])
    )
    assert s["security_level"] == "critical"


def test_when_violations_grow__per_round_increase_decides_high_or_critical(make_security_metrics):
    mon = SecurityMonitor(None, min_clients=2, violation_limit=5)
    first = mon.assess_round_security(_round(0, "abcd", violations=2, make=make_security_metrics))
    assert first["violations"] == 2 and first["security_level"] == "high"
    # cumulative 3 -> only 1 new this round: still high, not critical
    second = mon.assess_round_security(_round(1, "abcd", violations=3, make=make_security_metrics))
    assert second["violations"] == 1 and second["security_level"] == "high"
    third = mon.assess_round_security(_round(2, "abcd", violations=9, make=make_security_metrics))
    assert third["violations"] == 6 and third["security_level"] == "critical"


def test_when_the_same_client_is_flagged_twice__it_becomes_a_high_repeat_attacker():
    mon = SecurityMonitor(None, min_clients=2)
    assert mon.assess_round_security(_round(0, "abcdef", byz=["f"]))["security_level"] == "medium"
    s = mon.assess_round_security(_round(1, "abcdef", byz=["f"]))
    assert s["security_level"] == "high"
    assert any(i["type"] == "repeat_attacker" and i["datasite_id"] == "f" for i in s["incidents"])


def test_when_messages_are_rejected__each_is_a_medium_incident():
    s = SecurityMonitor(None, min_clients=2).assess_round_security(
        _round(3, "abcd", rejected={"b": "replay", "c": "expired"})
    )
    assert s["security_level"] == "medium"
    assert sorted(i["reason"] for i in s["incidents"]) == ["expired", "replay"]


def test_when_the_seeds_campaign_loop_meets_a_critical_round__it_stops_and_grades_critical():
    # The loop of the seed's ProductionSecureOrchestrator.execute_secure_training_campaign.
    rounds = [
        _round(0, "abcde"),
        _round(1, "abcde", byz=["e"]),
        _round(2, "abcde", byz=["c", "d", "e"]),
        _round(3, "abcde"),
    ]
    monitor = SecurityMonitor(None, min_clients=2)
    campaign_results = {
        "rounds": [],
        "security_incidents": [],
        "byzantine_attacks": [],
        "overall_security_level": "unknown",
    }
    for round_num in range(len(rounds)):
        round_result = rounds[round_num]
        campaign_results["rounds"].append(round_result)
        security_status = monitor.assess_round_security(round_result)
        if security_status["incidents"]:
            campaign_results["security_incidents"].extend(security_status["incidents"])
        if security_status["byzantine_attacks"]:
            campaign_results["byzantine_attacks"].extend(security_status["byzantine_attacks"])
        if security_status["security_level"] == "critical":
            break
    campaign_results["overall_security_level"] = monitor.assess_campaign_security(campaign_results)
    assert len(campaign_results["rounds"]) == 3
    assert [a["datasite_id"] for a in campaign_results["byzantine_attacks"]] == ["e", "c", "d", "e"]
    assert campaign_results["overall_security_level"] == "critical"


def test_when_a_campaign_had_only_contained_attacks__its_level_is_medium():
    fresh = SecurityMonitor(None)
    level = fresh.assess_campaign_security(
        {
            "security_incidents": [{"severity": "medium"}],
            "byzantine_attacks": [{"datasite_id": "x"}],
        }
    )
    assert level == "medium"
    assert (
        fresh.assess_campaign_security({"security_incidents": [], "byzantine_attacks": []}) == "low"
    )


def test_when_the_manager_returns_a_foreign_shape__the_dashboard_raises_a_typed_error(
    make_security_metrics,
):
    from federation.errors import PdmFedError

    broken = make_security_metrics()
    del broken["security_metrics"]["clients_filtered"]
    broken["noise_multiplier"] = "lots"
    with pytest.raises(PdmFedError, match="missing security_metrics.clients_filtered") as info:
        SecurityMetricsDashboard(_Manager(broken)).generate_security_dashboard()
    assert "non-numeric noise_multiplier" in str(info.value)
