"""The four services as processes, scraped by a real Prometheus during a campaign over RabbitMQ."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from e2e_helpers import (
    ServiceProcesses,
    campaign_config,
    delete_topology,
    service_env,
    unique_prefix,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "integration" / "prometheus"))
from prometheus_helpers import free_port  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).parents[2]
SERVICES = ("connector", "trainer-dispatch", "security", "aggregator")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - localhost
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _panel_metric_names() -> set[str]:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/overview.json").read_text())
    exprs = [t.get("expr", "") for p in dash["panels"] for t in p.get("targets", [])]
    names = set()
    for e in exprs:
        for m in re.findall(r"\b(pdmfed_[a-z_]+)", e):
            names.add(re.sub(r"_(bucket|sum|count)$", "", m))
    return names


def test_when_services_run_a_campaign__prometheus_scrapes_round_and_consumption_from_every_service(
    fleet, amqp_url, tmp_path, prometheus_server
):
    prefix = unique_prefix("prom")
    env = service_env(amqp_url, prefix, tmp_path / "keys", fleet.trust_dir, redis_url=None)
    ports = {name: free_port() for name in SERVICES}
    procs = ServiceProcesses(env, tmp_path, extra_env={n: {"PDMFED_METRICS_PORT": str(p)} for n, p in ports.items()})
    for name in SERVICES:
        procs.start(name)
    prom = prometheus_server(ports)
    cfg = campaign_config(fleet.sites, campaign_id="e2e-prometheus", rounds=2, seed=2,
                          n_features=fleet.data.n_features, window=fleet.data.window)
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(cfg.to_payload()))
    try:
        # the documented path: `pdmfed campaign --config …` against the running services
        cli = subprocess.run(
            [sys.executable, "-m", "federation.cli", "campaign", "--config", str(config),
             "--out", str(tmp_path / "runs"), "--timeout", "300"],
            env={**env, "PDMFED_STATE_DIR": str(tmp_path / "orchestrator")},
            capture_output=True, text=True, timeout=360,
        )
        health = {n: (_get(f"http://127.0.0.1:{p}/healthz")[0], _get(f"http://127.0.0.1:{p}/readyz")[0])
                  for n, p in ports.items()}
        scraped = "".join(_get(f"http://127.0.0.1:{p}/metrics")[1] for p in ports.values())
        rounds = prom.wait_for("pdmfed_round == 2", timeout=30, min_series=2)
        consumed = prom.wait_for("sum by (service) (pdmfed_messages_consumed_total) > 0", timeout=30,
                                 min_series=len(SERVICES))
    finally:
        codes = procs.stop_all()
        delete_topology(amqp_url, prefix)
    assert cli.returncode == 0, (cli.stderr[-3000:], {n: procs.log(n)[-2000:] for n in SERVICES})
    summary = json.loads((tmp_path / "runs" / cfg.campaign_id / "summary.json").read_text())
    assert summary["final"]["reason"] == "max_rounds" and len(summary["rounds"]) == 2
    assert (tmp_path / "runs" / cfg.campaign_id / "report.html").stat().st_size > 10_000
    assert (tmp_path / "runs" / cfg.campaign_id / "model.msgpack").exists()
    assert health == {n: (200, 200) for n in SERVICES}
    assert {r["metric"]["service"] for r in rounds} >= {"trainer-dispatch", "aggregator"}
    assert {r["metric"]["service"] for r in consumed} == set(SERVICES)
    missing = {n for n in _panel_metric_names() if n not in scraped}
    assert not missing, f"dashboard panels query metrics no service exports: {missing}"
    assert all(c == 0 for c in codes.values()), codes
