"""diagnose_connection_failures against a real PySyft 0.9.5 datasite."""

from __future__ import annotations

import json

import pytest
from federation.monitoring import diagnose_connection_failures, diagnose_main

pytestmark = pytest.mark.integration


def test_when_a_real_datasite_is_healthy__diagnosis_has_no_issues(syft_datasite, syft_admin):
    configs = [
        {
            "datasite_id": "factory_a",
            "url": syft_datasite["url"],
            "credentials": syft_admin,
        }
    ]
    r = diagnose_connection_failures(None, configs)["factory_a"]
    assert r["issues"] == [], r
    assert "PySyft connection successful" in r["checks"]
    assert any(syft_datasite["name"] in c for c in r["checks"])


def test_when_the_password_is_wrong__a_real_datasite_reports_authentication_failed(
    syft_datasite, syft_admin
):
    configs = [
        {
            "datasite_id": "factory_a",
            "url": syft_datasite["url"],
            "credentials": {"email": syft_admin["email"], "password": "not-the-password"},
        }
    ]
    r = diagnose_connection_failures(None, configs)["factory_a"]
    assert len(r["issues"]) == 1
    assert r["issues"][0].startswith("PySyft authentication failed")
    assert "Verify admin credentials are correct" in r["recommendations"]


def test_when_diagnose_cli_runs_against_a_real_datasite__json_says_ok(
    syft_datasite, syft_admin, monkeypatch, capsys
):
    monkeypatch.setenv("PDMFED_DATASITE_ADMIN_PASSWORD", syft_admin["password"])
    rc = diagnose_main(
        ["--datasite", f"f1={syft_datasite['url']}", "--email", syft_admin["email"], "--json"]
    )
    out = capsys.readouterr().out
    data = json.loads(out)
    assert rc == 0, data
    assert data["f1"]["ok"] is True
