"""The four services as processes, scraped by a real Prometheus with the shipped alert rules while
real PySyft datasites train over RabbitMQ: every dashboard panel answers for the campaign, a
healthy campaign raises no alert, a faulty one (an unreachable datasite, a frozen aggregator)
raises the alerts its faults call for, and the budget alerts fire on the campaign's real series
moved over its budget (promtool)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from e2e_helpers import (
    ORCH_EMAIL,
    ORCH_PASSWORD_ENV,
    ServiceProcesses,
    campaign_config,
    delete_topology,
    service_env,
    unique_prefix,
)
from federation.campaign import CampaignConfig
from federation.datasite_registry import write_registry

sys.path.insert(0, str(Path(__file__).parents[1] / "integration" / "prometheus"))
from prometheus_helpers import free_port  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).parents[2]
SERVICES = ("connector", "trainer-dispatch", "security", "aggregator")
#: Grafana's $__rate_interval for a 1 s scrape, and the panels' other variables.
RATE_INTERVAL = "30s"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - localhost
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _panel_queries(campaign: str) -> list[tuple[str, str]]:
    """(panel title, query) of every pdmfed panel, variables as Grafana would fill them in. The
    queue-depth panel reads RabbitMQ's own exporter (plugin rabbitmq_prometheus), which the
    test broker does not run; the stack test (tests/stack) scrapes it."""
    dash = json.loads((ROOT / "deploy/grafana/dashboards/overview.json").read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            if "pdmfed_" not in expr:
                continue
            expr = expr.replace("$__rate_interval", RATE_INTERVAL)
            expr = expr.replace("$campaign", campaign).replace("$service", ".*")
            out.append((f"{panel['title']} [{target['refId']}]", expr))
    return out


def _rule_files(workdir: Path) -> list[Path]:
    """The shipped alerts.yml, and a copy of each alert named <alert>Now without its `for`:
    the same expressions, firing at once, so a test can see them fire in seconds."""
    shipped = ROOT / "deploy/prometheus/alerts.yml"
    doc = yaml.safe_load(shipped.read_text())
    for group in doc["groups"]:
        group["name"] += "-now"
        for rule in group["rules"]:
            if "alert" in rule:
                rule["alert"] += "Now"
                rule.pop("for", None)
    now = workdir / "alerts-now.yml"
    now.write_text(yaml.safe_dump(doc, sort_keys=False))
    return [shipped, now]


class _Watcher(threading.Thread):
    """Polls every panel query and the ALERTS series while a campaign runs."""

    def __init__(self, prom, queries: list[tuple[str, str]], connected_expr: str) -> None:
        super().__init__(daemon=True)
        self.prom, self.queries, self.connected_expr = prom, queries, connected_expr
        self.answered: set[str] = set()
        self.alerts: list[tuple[float, dict]] = []
        self.all_connected_at: float | None = None
        self.errors: dict[str, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for title, expr in self.queries:
                if title in self.answered:
                    continue
                try:
                    result = self.prom.query(expr)
                except urllib.error.HTTPError as exc:  # a query Prometheus refuses
                    self.errors[title] = f"{exc}: {expr}"
                    continue
                if any(math.isfinite(float(r["value"][1])) for r in result):
                    self.answered.add(title)
            now = time.time()
            if self.all_connected_at is None and self.prom.query(self.connected_expr):
                self.all_connected_at = now
            self.alerts += [(now, a["metric"]) for a in self.prom.query("ALERTS")]
            self.stop.wait(1.0)


def _firing(prom, **labels: str) -> set[str]:
    return {
        a["metric"]["alertname"]
        for a in prom.query('ALERTS{alertstate="firing"}')
        if all(a["metric"].get(k) == v for k, v in labels.items())
    }


def _wait_firing(prom, wanted: set[str], timeout: float, **labels: str) -> set[str]:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline and not wanted <= seen:
        seen = _firing(prom, **labels)
        time.sleep(1.0)
    return seen


def _wait_metric(
    port: int, name: str, campaign: str, value: float, timeout: float, cli: subprocess.Popen
) -> None:
    """Poll a service's /metrics until `name` of `campaign` reaches `value`; fail with the
    campaign CLI's output when it ended first (the campaign finished without getting there)."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(rf'^{name}\{{campaign="{re.escape(campaign)}"\}} (\S+)$', re.M)
    while time.monotonic() < deadline and cli.poll() is None:
        match = pattern.search(_get(f"http://127.0.0.1:{port}/metrics")[1])
        if match and float(match.group(1)) >= value:
            return
        time.sleep(0.2)
    ended = "" if cli.poll() is None else f"; the campaign ended: {cli.communicate()[0][-3000:]}"
    pytest.fail(f"{name}{{campaign={campaign!r}}} never reached {value}{ended}")


def _wait_gone(port: int, series: str, timeout: float) -> None:
    """Poll a service's /metrics until `series` is no longer exported, for at most `timeout`
    seconds (the assertion on the scrape that follows says what was left)."""
    deadline = time.monotonic() + timeout
    while series in _get(f"http://127.0.0.1:{port}/metrics")[1] and time.monotonic() < deadline:
        time.sleep(0.2)


def _budget_alerts_on_real_series(prom, campaign: str, workdir: Path):
    """`promtool test rules` on the series Prometheus scraped for `campaign` (every label as
    scraped): the budget alerts stay quiet on the real values and fire once the spent epsilon
    is moved to 90 % (PdmfedPrivacyBudgetHigh, while running) or 110 % of the real budget."""

    def series(name: str) -> list[tuple[str, float, dict]]:
        out = []
        for r in prom.query(f'{name}{{campaign="{campaign}"}}'):
            labels = ",".join(
                f'{k}="{v}"' for k, v in sorted(r["metric"].items()) if k != "__name__"
            )
            out.append((f"{name}{{{labels}}}", float(r["value"][1]), r["metric"]))
        assert out, f"Prometheus has no {name} for {campaign}"
        return out

    spent, budget = series("pdmfed_dp_epsilon"), series("pdmfed_dp_max_epsilon")
    (running,) = series("pdmfed_campaign_running")
    limit = {m["level"]: v for _, v, m in budget}
    assert {m["level"] for _, _, m in spent} <= set(limit), (spent, budget)

    def case(epsilon_share: float | None, still_running: bool, expected: dict) -> dict:
        inputs = [{"series": s, "values": f"{v}x5"} for s, v, _ in budget]
        inputs.append({"series": running[0], "values": f"{int(still_running)}x5"})
        for s, v, m in spent:
            value = v if epsilon_share is None else epsilon_share * limit[m["level"]]
            inputs.append({"series": s, "values": f"{value}x5"})
        checks = [
            {
                "eval_time": "2m",
                "alertname": name,
                "exp_alerts": [
                    {"exp_labels": {"campaign": campaign, "level": m["level"], **labels}}
                    for _, _, m in spent
                ]
                if name in expected
                else [],
            }
            for name, labels in (
                ("PdmfedPrivacyBudgetHigh", {"severity": "warning"}),
                ("PdmfedPrivacyBudgetExceeded", {"severity": "critical"}),
            )
        ]
        return {"interval": "1m", "input_series": inputs, "alert_rule_test": checks}

    tests = [
        case(None, True, {}),  # as scraped: far below the budget
        case(0.9, True, {"PdmfedPrivacyBudgetHigh"}),
        case(0.9, False, {}),  # a finished campaign's last value is not current
        case(1.1, True, {"PdmfedPrivacyBudgetHigh", "PdmfedPrivacyBudgetExceeded"}),
        case(1.1, False, {"PdmfedPrivacyBudgetExceeded"}),
    ]
    # the shipped rules without their annotations (promtool would compare the humanized text)
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (workdir / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    (workdir / "budget_test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["alerts.yml"],
                "evaluation_interval": "1m",
                "tests": tests,
            },
            sort_keys=False,
        )
    )
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/install-tools.sh"
    return subprocess.run(
        [promtool, "test", "rules", "budget_test.yml"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_prometheus_sees_every_panel_answer_and_the_alerts_tell_a_healthy_campaign_from_a_faulty_one(
    fleet, amqp_url, tmp_path, prometheus_server
):
    prefix = unique_prefix("prom")
    # the connector's registry: the fleet, and a fourth datasite that never answers
    registry = write_registry(
        tmp_path / "registry",
        {
            **{
                ds: (h.url, ORCH_EMAIL, os.environ[ORCH_PASSWORD_ENV])
                for ds, h in fleet.sites.items()
            },
            "factory_unreachable": (
                f"http://127.0.0.1:{free_port()}",
                ORCH_EMAIL,
                os.environ[ORCH_PASSWORD_ENV],
            ),
        },
    )
    env = service_env(
        amqp_url, prefix, tmp_path / "keys", fleet.trust_dir, redis_url=None, registry=registry
    )
    ports = {name: free_port() for name in SERVICES}
    procs = ServiceProcesses(
        env, tmp_path, extra_env={n: {"PDMFED_METRICS_PORT": str(p)} for n, p in ports.items()}
    )
    for name in SERVICES:
        procs.start(name)
    prom = prometheus_server(ports, rule_files=_rule_files(tmp_path))
    cfg = campaign_config(
        fleet.sites,
        campaign_id="e2e-prometheus",
        rounds=2,
        seed=2,
        n_features=fleet.data.n_features,
        window=fleet.data.window,
        privacy={
            "enabled": True,
            "mode": "central",
            "noise_multiplier": 0.01,
            "clip_norm": 5.0,
            "max_epsilon": 1e6,
        },
    )
    # the faulty campaign: a fourth datasite that never answers, and the aggregator frozen as
    # round 1 opens (the round outlives its 30 s deadline: it can never complete). The deadline
    # also bounds round 0, where the three real datasites compute their statistics: a shorter
    # one ends the campaign no_quorum on a loaded machine before round 1 ever opens.
    faulty = campaign_config(
        fleet.sites,
        campaign_id="e2e-prometheus-faulty",
        rounds=1,
        seed=4,
        quorum=3,
        max_retries=0,
        n_features=fleet.data.n_features,
        window=fleet.data.window,
        round_timeout_s=30,
    )
    faulty = CampaignConfig.model_validate(
        {
            **faulty.to_payload(),
            "datasites": [*faulty.to_payload()["datasites"], "factory_unreachable"],
        }
    )

    def campaign_cli(c, **kw):
        config = tmp_path / f"{c.campaign_id}.yaml"
        config.write_text(yaml.safe_dump(c.to_payload()))
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "federation.cli",
                "campaign",
                "--config",
                str(config),
                "--out",
                str(tmp_path / "runs"),
                "--timeout",
                "300",
            ],
            env={**env, "PDMFED_STATE_DIR": str(tmp_path / "orchestrator" / c.campaign_id)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kw,
        )

    c = cfg.campaign_id
    watcher = _Watcher(
        prom, _panel_queries(c), f'pdmfed_datasites_connected{{campaign="{c}"}} == 3'
    )
    watcher.start()
    frozen = None
    faulty_cli = None
    try:
        # the documented path: `pdmfed campaign --config …` against the running services
        cli = campaign_cli(cfg)
        cli_out, _ = cli.communicate(timeout=360)
        # the connector drops its sessions' series once it learns of the completion (bounded)
        _wait_gone(ports["connector"], f'pdmfed_datasites_connected{{campaign="{c}"}}', 30)
        watcher.stop.set()
        watcher.join(timeout=30)
        health = {
            n: (_get(f"http://127.0.0.1:{p}/healthz")[0], _get(f"http://127.0.0.1:{p}/readyz")[0])
            for n, p in ports.items()
        }
        scraped = {n: _get(f"http://127.0.0.1:{p}/metrics")[1] for n, p in ports.items()}
        rounds = prom.wait_for(f'pdmfed_round{{campaign="{c}"}} == 2', timeout=30, min_series=2)
        consumed = prom.wait_for(
            "sum by (service) (pdmfed_messages_consumed_total) > 0",
            timeout=30,
            min_series=len(SERVICES),
        )
        finished = prom.wait_for(f'pdmfed_campaign_running{{campaign="{c}"}} == 0', timeout=30)
        after_healthy = prom.query("ALERTS")

        budget_cases = _budget_alerts_on_real_series(prom, c, tmp_path)

        faulty_cli = campaign_cli(faulty)
        _wait_metric(
            ports["trainer-dispatch"], "pdmfed_round", faulty.campaign_id, 1, 120, faulty_cli
        )
        os.killpg(procs.procs["aggregator"].pid, signal.SIGSTOP)  # round 1 can never complete
        frozen = "aggregator"
        wanted = {"PdmfedDatasitesDisconnectedNow", "PdmfedRoundOverDeadlineNow"}
        fired = _wait_firing(prom, wanted, timeout=120, campaign=faulty.campaign_id)
        down = _wait_firing(prom, {"PdmfedServiceDownNow"}, timeout=30, service="aggregator")
        faulty_firing = _firing(prom, campaign=faulty.campaign_id)
    finally:
        watcher.stop.set()
        if frozen is not None:
            os.killpg(procs.procs[frozen].pid, signal.SIGCONT)
        if faulty_cli is not None:
            faulty_cli.terminate()
            faulty_cli.communicate(timeout=30)
        codes = procs.stop_all()
        delete_topology(amqp_url, prefix)
    logs = {n: procs.log(n)[-2000:] for n in SERVICES}
    assert cli.returncode == 0, (cli_out[-3000:], logs)
    summary = json.loads((tmp_path / "runs" / c / "summary.json").read_text())
    assert summary["final"]["reason"] == "max_rounds" and len(summary["rounds"]) == 2
    assert (tmp_path / "runs" / c / "report.html").stat().st_size > 10_000
    assert (tmp_path / "runs" / c / "model.msgpack").exists()
    assert health == {n: (200, 200) for n in SERVICES}
    assert {r["metric"]["service"] for r in rounds} >= {"trainer-dispatch", "aggregator"}
    assert {r["metric"]["service"] for r in consumed} == set(SERVICES)
    assert {r["metric"]["service"] for r in finished} == {"trainer-dispatch"}

    assert watcher.errors == {}, watcher.errors
    # the connector's real sessions: all three datasites, then dropped once the campaign completed
    assert watcher.all_connected_at is not None, logs["connector"]
    assert f'pdmfed_datasites_connected{{campaign="{c}"}}' not in scraped["connector"]
    # every panel's query returned data for the running campaign
    missing = [title for title, _ in _panel_queries(c) if title not in watcher.answered]
    assert not missing, f"panels without data for the campaign: {missing}"
    # a healthy campaign fires none of the shipped alerts (with `for` off a round closed at its
    # deadline, a slow scrape or a login under way may flicker on a loaded machine); the
    # finished campaign leaves nothing pending, not even with `for` off
    shipped_firing = [
        a
        for _, a in watcher.alerts
        if a["alertstate"] == "firing" and not a["alertname"].endswith("Now")
    ]
    assert shipped_firing == [], shipped_firing
    left = [a["metric"] for a in after_healthy if a["metric"].get("campaign") == c]
    assert left == [], left

    # the budget alerts on the campaign's real series: quiet as scraped, firing at 90 % and 110 %
    assert budget_cases.returncode == 0, budget_cases.stdout + budget_cases.stderr
    # the faulty campaign: each fault raises its alert
    assert wanted <= fired, (fired, logs)
    assert "PdmfedServiceDownNow" in down
    # (no datasite at all may be connected yet while the connector logs in again: that one may
    # fire too), but nothing about the budget
    assert not {"PdmfedPrivacyBudgetHighNow", "PdmfedPrivacyBudgetExceededNow"} & faulty_firing
    assert all(code == 0 for code in codes.values()), codes
