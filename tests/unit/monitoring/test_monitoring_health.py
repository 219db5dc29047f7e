"""HealthServer: probe codes follow the callbacks; port 0 picks a free port; stop frees it."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from federation.monitoring import HealthServer


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_when_ready_and_alive_flip__readyz_and_healthz_codes_follow(registry):
    state = {"ready": False, "alive": True}
    with HealthServer(
        0, registry, ready=lambda: state["ready"], alive=lambda: state["alive"], host="127.0.0.1"
    ) as server:
        assert server.port > 0
        assert _get(server.url + "/healthz")[0] == 200
        assert _get(server.url + "/readyz")[0] == 503
        state["ready"] = True
        assert _get(server.url + "/readyz")[0] == 200
        state["alive"] = False
        assert _get(server.url + "/healthz")[0] == 503


def test_when_the_ready_callback_raises__readyz_is_503_and_the_server_keeps_serving(registry):
    def broken() -> bool:
        raise RuntimeError("channel closed")

    with HealthServer(0, registry, ready=broken, host="127.0.0.1") as server:
        code, body = _get(server.url + "/readyz")
        assert code == 503
        assert "RuntimeError" in body
        assert _get(server.url + "/healthz")[0] == 200


def test_when_a_path_is_unknown__the_server_answers_404(registry):
    with HealthServer(0, registry, ready=lambda: True, host="127.0.0.1") as server:
        assert _get(server.url + "/nope")[0] == 404


def test_when_two_servers_start_on_port_zero__they_get_different_ports(registry):
    with (
        HealthServer(0, registry, host="127.0.0.1") as a,
        HealthServer(0, registry, host="127.0.0.1") as b,
    ):
        assert a.port != b.port


def test_when_stopped__the_port_no_longer_answers(registry):
    server = HealthServer(0, registry, ready=lambda: True, host="127.0.0.1")
    url = server.url + "/healthz"
    assert _get(url)[0] == 200
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
