"""The Grafana provisioning and overview dashboard: structure and metric names."""

from __future__ import annotations

import json
import re

import yaml
from deploy_helpers import (
    DEPLOY,
    DESIGN_METRICS,
    known_metric_names,
    registered_metric_names,
    require_tool,
    run,
)

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "overview.json"
_METRIC = re.compile(r"\b((?:pdmfed|rabbitmq)_[a-zA-Z0-9_]+)\b")
_RABBITMQ_EXPORTER = {
    # rabbitmq_prometheus per-object queue metrics (/metrics/per-object).
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
}


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def _expressions() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def test_the_datasource_uid_is_the_one_every_panel_uses():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    for panel in _panels():
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]


def test_the_dashboard_provider_points_where_compose_mounts_the_dashboards():
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/pdmfed.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts


def test_the_dashboard_has_the_panels_the_issue_lists():
    titles = " | ".join(p["title"].lower() for p in _panels())
    for topic in (
        "round",
        "rmse",
        "participants",
        "ε",
        "rejections by reason",
        "reputation per factory",
        "bytes per service",
        "latency",
        "queue depth",
    ):
        assert topic in titles, f"no panel for {topic!r}"


def test_panel_ids_and_grid_positions_are_unique():
    panels = _panels()
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        assert g["x"] + g["w"] <= 24


def test_every_metric_a_panel_queries_is_a_pdmfed_metric_or_a_rabbitmq_exporter_metric():
    known = known_metric_names() | _RABBITMQ_EXPORTER
    unknown = [
        (title, name)
        for title, expr in _expressions()
        for name in _METRIC.findall(expr)
        if name not in known
    ]
    assert unknown == []


def test_every_design_metric_appears_on_the_dashboard():
    used = {name for _, expr in _expressions() for name in _METRIC.findall(expr)}
    for name, kind in DESIGN_METRICS.items():
        series = (
            {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
        )
        assert used & series, f"{name} is on no panel"


def test_the_design_list_matches_the_registered_metrics():
    registered = registered_metric_names()
    assert registered is not None, (
        "federation.monitoring.metrics must register the pdmfed_* metrics"
    )
    expected = set()
    for name, kind in DESIGN_METRICS.items():
        expected |= (
            {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
        )
    assert expected <= registered


#: Metrics scoped to one campaign (label `campaign`) / to one service (label `service`).
_CAMPAIGN_SCOPED = {
    "pdmfed_round",
    "pdmfed_round_opened_timestamp_seconds",
    "pdmfed_round_duration_seconds",
    "pdmfed_round_deadline_seconds",
    "pdmfed_campaign_running",
    "pdmfed_datasites_connected",
    "pdmfed_datasites_expected",
    "pdmfed_byzantine_detected_total",
    "pdmfed_client_reputation",
    "pdmfed_dp_epsilon",
    "pdmfed_dp_max_epsilon",
    "pdmfed_dp_noise_applications_total",
    "pdmfed_updates_aggregated_total",
    "pdmfed_train_rmse",
}
_SELECTOR = re.compile(r"\b(pdmfed_[a-z_]+?)(?:_bucket|_sum|_count)?(\{[^}]*\})?(?=[\s\[)]|$)")


def test_the_dashboard_has_campaign_and_service_variables_and_every_query_uses_its_own():
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert set(variables) == {"campaign", "service"}
    assert "pdmfed_campaign_running" in variables["campaign"]["query"]["query"]
    for title, expr in _expressions():
        for name, selector in _SELECTOR.findall(expr):
            wanted = 'campaign=~"$campaign"' if name in _CAMPAIGN_SCOPED else 'service=~"$service"'
            assert wanted in (selector or ""), f"{title}: {name} ignores {wanted}"


def test_the_rmse_panel_says_it_plots_training_rmse():
    (panel,) = [p for p in _panels() if "rmse" in p["title"].lower()]
    assert "training" in panel["title"].lower()
    assert [_METRIC.findall(t["expr"]) for t in panel["targets"]] == [["pdmfed_train_rmse"]]


def test_every_panel_query_is_valid_promql_with_its_variables_filled_in(tmp_path):
    """promtool parses each query as Grafana sends it (variables and $__rate_interval filled)."""
    promtool = require_tool("promtool")
    rules = [
        {
            "record": f"panel:query_{i}",
            "expr": expr.replace("$__rate_interval", "1m")
            .replace("$campaign", "campaign-1|campaign-2")
            .replace("$service", ".*"),
        }
        for i, (_, expr) in enumerate(_expressions())
    ]
    (tmp_path / "panels.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]})
    )
    result = run([promtool, "check", "rules", "panels.yml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
