"""Diagnostics: security self-test on a fake manager, connection diagnosis over local HTTP."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from federation.monitoring import (
    diagnose_connection_failures,
    diagnose_main,
    format_diagnosis,
    format_validation,
    validate_security_configuration,
)


# --- validate_security_configuration -------------------------------------------------------
def test_when_every_part_works__validation_reports_working_and_no_issues(fake_secure_comm):
    r = validate_security_configuration(fake_secure_comm())
    assert r["encryption"] == "working"
    assert r["differential_privacy"] == "working"
    assert r["byzantine_tolerance"] == "working"
    assert r["issues"] == []
    assert "Tampered package refused" in r["checks"]
    assert "Replayed package refused" in r["checks"]
    assert "security configuration OK" in format_validation(r)


def test_when_dp_adds_no_noise__validation_says_not_working(fake_secure_comm):
    r = validate_security_configuration(fake_secure_comm(dp_adds_noise=False))
    assert r["differential_privacy"] == "not_working"
    assert "Differential privacy noise not applied" in r["issues"]


def test_when_detection_is_blind__validation_says_not_sensitive(fake_secure_comm):
    r = validate_security_configuration(fake_secure_comm(bft_sensitive=False))
    assert r["byzantine_tolerance"] == "not_sensitive"
    assert "Consider adjusting BFT threshold" in r["recommendations"]


def test_when_tampered_or_replayed_packages_pass__validation_flags_each(fake_secure_comm):
    r = validate_security_configuration(
        fake_secure_comm(verify_integrity=False, check_replay=False)
    )
    assert r["encryption"] == "degraded"
    assert any("tampered package was accepted" in i for i in r["issues"])
    assert any("replayed package was accepted" in i for i in r["issues"])
    assert "has issues" in format_validation(r)


def test_when_dp_and_bft_are_disabled__validation_says_disabled(fake_secure_comm):
    r = validate_security_configuration(fake_secure_comm(enable_dp=False, enable_bft=False))
    assert r["differential_privacy"] == "disabled"
    assert r["byzantine_tolerance"] == "disabled"
    assert r["issues"] == []


def test_when_encryption_raises__validation_says_failed_with_the_error(fake_secure_comm):
    comm = fake_secure_comm()

    def broken(update):
        raise ValueError("no key")

    comm.encrypt_model_update = broken
    r = validate_security_configuration(comm)
    assert r["encryption"] == "failed"
    assert any("no key" in i for i in r["issues"])


# --- diagnose_connection_failures ------------------------------------------------------------
def _serve(status: int, body: bytes):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code = status if self.path == "/api/v2/metadata" else 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def syft_like():
    server = _serve(200, json.dumps({"name": "factory-a", "syft_version": "0.9.5"}).encode())
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def _cfg(url, password="pw"):
    return [
        {
            "datasite_id": "factory_a",
            "url": url,
            "credentials": {"email": "e@x", "password": password},
        }
    ]


def test_when_the_datasite_answers_and_login_works__there_are_no_issues(syft_like, fake_comm):
    calls = []
    r = diagnose_connection_failures(
        fake_comm({"factory_a": "connected"}),
        _cfg(syft_like),
        login=lambda url, email, pw: calls.append((url, email)) or object(),
    )["factory_a"]
    assert r["issues"] == []
    assert r["ok"] is True
    assert "PySyft connection successful" in r["checks"]
    assert any("factory-a" in c for c in r["checks"])
    assert r["manager_connected"] is True
    assert calls == [(syft_like, "e@x")]


def test_when_the_port_is_closed__the_issue_is_connection_refused_and_login_is_skipped():
    called = []
    r = diagnose_connection_failures(
        None, _cfg(_closed_port_url()), login=lambda *a: called.append(a)
    )["factory_a"]
    assert r["issues"] == ["Connection refused"]
    assert "Verify datasite is running and URL is correct" in r["recommendations"]
    assert called == []
    assert "0/1 datasites healthy" in format_diagnosis({"factory_a": r})


def test_when_the_metadata_endpoint_fails__the_http_status_is_an_issue():
    server = _serve(503, b"{}")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        r = diagnose_connection_failures(None, _cfg(url), login=lambda *a: object())["factory_a"]
    finally:
        server.shutdown()
        server.server_close()
    assert r["issues"][0].startswith("HTTP status: 503")


def test_when_credentials_are_wrong__the_issue_says_authentication_failed(syft_like):
    def refuse(url, email, pw):
        raise RuntimeError("Invalid credentials.")

    r = diagnose_connection_failures(None, _cfg(syft_like), login=refuse)["factory_a"]
    assert r["issues"] == ["PySyft authentication failed: Invalid credentials."]
    assert "Verify admin credentials are correct" in r["recommendations"]


def test_when_no_password_is_configured__it_is_an_issue_not_a_crash(syft_like):
    r = diagnose_connection_failures(None, _cfg(syft_like, password=""))["factory_a"]
    assert r["issues"] == ["No credentials configured"]


def test_when_diagnose_cli_gets_json__it_prints_parseable_results_and_exit_1(capsys, monkeypatch):
    monkeypatch.setenv("PDMFED_DATASITE_ADMIN_PASSWORD", "secret-pw")
    rc = diagnose_main(["--datasite", f"f1={_closed_port_url()}", "--json", "--timeout", "2"])
    out = capsys.readouterr().out
    assert rc == 1
    data = json.loads(out)
    assert data["f1"]["issues"] == ["Connection refused"]
    assert "secret-pw" not in out


def test_when_diagnose_cli_gets_a_bad_datasite_spec__it_exits_2(capsys):
    assert diagnose_main(["--datasite", "no-equals-sign"]) == 2
    assert "ID=URL" in capsys.readouterr().err


def test_when_a_config_file_holds_a_password__diagnose_refuses_it(tmp_path, capsys):
    cfg = tmp_path / "sites.json"
    cfg.write_text(json.dumps([{"url": "http://x:1", "credentials": {"password": "p"}}]))
    assert diagnose_main(["--config", str(cfg)]) == 2
    assert "passwords do not belong in files" in capsys.readouterr().err


def test_when_no_encryption_key_is_set__validate_security_cli_refuses_with_exit_2(
    monkeypatch, capsys
):
    from federation.monitoring import validate_security_main

    for var in ("PDMFED_ENCRYPTION_KEY", "PDMFED_KEY_SALT", "PDMFED_DEMO"):
        monkeypatch.delenv(var, raising=False)
    assert validate_security_main(["--self-test"]) == 2
    assert "PDMFED_ENCRYPTION_KEY" in capsys.readouterr().err
