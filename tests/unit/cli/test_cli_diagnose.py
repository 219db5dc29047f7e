"""`pdmfed diagnose` says what it checked, what it skipped and why a connection failed."""

from __future__ import annotations

import socket

from cli_helpers import run_pdmfed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_when_the_host_name_does_not_resolve__diagnose_says_the_name_lookup_failed(tmp_path):
    run = run_pdmfed(
        "diagnose", "--datasite", "f1=http://pdmfed-no-such-host.invalid:8081", tmp_path=tmp_path
    )
    assert run.returncode == 1 and run.stderr == ""
    assert run.stdout.splitlines() == [
        "[FAIL] f1  http://pdmfed-no-such-host.invalid:8081",
        "    - skipped: PySyft login: the server is unreachable",
        "    ✗ Name lookup failed: cannot resolve host 'pdmfed-no-such-host.invalid'",
        "    → Check the host name in the URL (and DNS / the container network)",
        "0/1 datasites healthy",
    ]


def test_when_nothing_listens_on_the_port__diagnose_says_refused_and_ticks_nothing(tmp_path):
    port = _closed_port()
    run = run_pdmfed("diagnose", "--datasite", f"f1=127.0.0.1:{port}", tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.stdout.splitlines() == [
        f"[FAIL] f1  127.0.0.1:{port}",
        "    - skipped: PySyft login: the server is unreachable",
        "    ✗ Connection refused",
        "    → Verify datasite is running and URL is correct",
        "0/1 datasites healthy",
    ]
    assert "✓" not in run.stdout
