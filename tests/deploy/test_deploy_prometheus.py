"""promtool validation of deploy/prometheus: config, rules, and per-alert unit tests."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from deploy_helpers import DEPLOY, known_metric_names, require_tool, run

PROM = DEPLOY / "prometheus"

#: What issue 6 asks alerts for -> the alert(s) that cover it.
REQUIRED_ALERTS = {
    "service down": "PdmfedServiceDown",
    "messages rejected above a rate": "PdmfedMessagesRejected",
    "replay attempts": "PdmfedReplayAttempt",
    "Byzantine detections": "PdmfedByzantineUpdates",
    "privacy budget above 80%": "PdmfedPrivacyBudgetHigh",
    "round exceeding its deadline": "PdmfedRoundOverDeadline",
    "dead-letter queue growing": "PdmfedDeadLetterQueueGrowing",
    "datasites disconnected": "PdmfedDatasitesDisconnected",
    "no datasite connected": "PdmfedNoDatasiteConnected",
    "privacy budget exceeded": "PdmfedPrivacyBudgetExceeded",
}


def _alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_when_promtool_checks_the_config__it_is_valid():
    promtool = require_tool("promtool")
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_when_promtool_checks_the_rules__they_are_valid():
    promtool = require_tool("promtool")
    result = run([promtool, "check", "rules", "alerts.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_when_promtool_runs_the_alert_unit_tests__they_pass():
    promtool = require_tool("promtool")
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_exists():
    names = {rule["alert"] for rule in _alert_rules()}
    missing = {need: alert for need, alert in REQUIRED_ALERTS.items() if alert not in names}
    assert not missing


def test_every_alert_has_a_firing_case_and_a_quiet_case():
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"


@pytest.mark.parametrize("alert", sorted(r["alert"] for r in _alert_rules()))
def test_when_an_alert_can_never_fire__its_unit_tests_fail(alert, tmp_path):
    """Mutation check: the unit tests really depend on each alert's expression."""
    promtool = require_tool("promtool")
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(1) == 0"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert result.returncode != 0, f"{alert}: tests still pass with a dead expression"


def test_every_metric_an_alert_queries_is_exported_by_pdmfed_or_rabbitmq():
    known = known_metric_names() | {"up"}
    recorded = {
        rule["record"]
        for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for rule in _alert_rules():
        for name in re.findall(r"\b(pdmfed_[a-z_]+|rabbitmq_[a-z_]+|up)\b", rule["expr"]):
            assert name in known or name in recorded or name.startswith("rabbitmq_"), (
                f"{rule['alert']} queries unknown metric {name}"
            )


def test_thresholds_come_from_the_campaign_not_from_constants():
    text = (PROM / "alerts.yml").read_text()
    assert "vector(" not in text, "a threshold is a constant, not the campaign's own value"
    exprs = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    for alert in ("PdmfedPrivacyBudgetHigh", "PdmfedPrivacyBudgetExceeded"):
        assert "pdmfed_dp_max_epsilon" in exprs[alert], alert
    assert "pdmfed_round_deadline_seconds" in exprs["PdmfedRoundOverDeadline"]
    assert "pdmfed_datasites_expected" in exprs["PdmfedDatasitesDisconnected"]
