"""A real Prometheus scrapes a real /metrics endpoint and answers queries about it."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_helpers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def round_exporter():
    """A prometheus_client HTTP exporter on a free port exposing gauge pdmfed_round."""
    registry = CollectorRegistry()
    gauge = Gauge("pdmfed_round", "Current federated round", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port, gauge
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_when_prometheus_scrapes_an_exporter__it_reports_the_current_round(
    prometheus_server, round_exporter
):
    port, gauge = round_exporter
    gauge.set(7)
    prom = prometheus_server({"aggregator": port})

    (series,) = prom.wait_for("pdmfed_round")
    assert series["metric"]["service"] == "aggregator"
    assert float(series["value"][1]) == 7.0

    gauge.set(8)
    prom.wait_for("pdmfed_round == 8")
    (up,) = prom.query('up{job="pdmfed-services"}')
    assert up["value"][1] == "1"


def test_when_a_target_is_not_listening__prometheus_reports_it_down(prometheus_server):
    prom = prometheus_server({"security": free_port()})
    (up,) = prom.wait_for('up{service="security"} == 0')
    assert up["metric"]["service"] == "security"
