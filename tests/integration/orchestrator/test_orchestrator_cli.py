"""`pdmfed` command line: failures end with a non-zero exit and a one-line reason, never a traceback."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys


def _pdmfed(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PDMFED_")}
    return subprocess.run(
        [sys.executable, "-m", "federation.cli", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_when_campaign_runs_without_a_broker_url__it_exits_2_with_a_one_line_reason(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 2\n")
    out = _pdmfed("campaign", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "PDMFED_AMQP_URL" in out.stderr


def test_when_a_service_starts_with_a_weak_key__it_refuses_and_says_why(tmp_path):
    out = _pdmfed(
        "service",
        "security",
        env={
            "PDMFED_ENCRYPTION_KEY": "short",
            "PDMFED_KEY_SALT": secrets.token_hex(8),
            "PDMFED_STATE_DIR": str(tmp_path),
        },
    )
    assert out.returncode == 2
    assert "too weak" in out.stderr and "short" not in out.stderr.replace("too weak", "")


def test_when_a_service_starts_with_signatures_off__it_refuses_in_one_line(tmp_path):
    out = _pdmfed(
        "service",
        "security",
        env={
            "PDMFED_ENCRYPTION_KEY": "x" * 32,
            "PDMFED_KEY_SALT": "saltsalt1",
            "PDMFED_REQUIRE_SIGNATURES": "false",
            "PDMFED_STATE_DIR": str(tmp_path),
        },
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "PDMFED_REQUIRE_SIGNATURES=false" in out.stderr and "pdmfed demo" in out.stderr


def test_when_the_campaign_yaml_is_invalid__the_error_names_the_problem(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: -3\nnot_a_field: 1\n")
    out = _pdmfed(
        "campaign",
        "--config",
        str(cfg),
        env={
            "PDMFED_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "PDMFED_ENCRYPTION_KEY": secrets.token_urlsafe(24),
            "PDMFED_KEY_SALT": secrets.token_hex(8),
        },
    )
    assert out.returncode == 2
    assert "invalid campaign config" in out.stderr and "rounds" in out.stderr
