"""PySyft's public default root login is never valid at a factory datasite, not even during start-up."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasite_helpers import tiny_partition
from federation.datasite import launch_datasite
from federation.datasite.launcher import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLLER = Path(__file__).with_name("login_poller.py")
SYFT_DEFAULT_EMAIL, SYFT_DEFAULT_PASSWORD = "info@openmined.org", "changethis"  # noqa: S105


def _start_poller(url: str, email: str, password: str) -> subprocess.Popen:
    proc = subprocess.Popen(  # noqa: S603 - our own helper script
        [sys.executable, str(POLLER), url, email],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(password + "\n")
    proc.stdin.flush()
    while True:  # PySyft takes seconds to import; polling must run before the server exists
        line = proc.stdout.readline()
        assert line, "the login poller died before it started polling"
        if line.strip() == "ready":
            return proc


def _stop_poller(proc: subprocess.Popen) -> dict:
    assert proc.stdin is not None
    out, _ = proc.communicate("stop\n", timeout=120)
    summary = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert summary, f"the login poller printed no summary: {out[-2000:]}"
    return json.loads(summary[-1])


def test_when_a_datasite_starts__the_default_root_login_is_refused_from_before_start_until_ready(
    tmp_path,
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    poller = _start_poller(url, SYFT_DEFAULT_EMAIL, SYFT_DEFAULT_PASSWORD)
    handle = None
    try:
        time.sleep(0.5)  # polled while nothing listens yet
        handle = launch_datasite(
            "food_lyon_line",
            port,
            tiny_partition(seed=3),
            admin_password=secrets.token_urlsafe(18),
            signing_key_dir=tmp_path / "keys",
        )
        time.sleep(1.0)  # and a while after the launcher reported it ready
        summary = _stop_poller(poller)
    finally:
        if poller.poll() is None:
            poller.kill()
        if handle is not None:
            handle.stop()
    counts = summary["counts"]
    # accepted: logins that returned a signing key; still_working: such keys reading the private
    # partition once the datasite was ready (root's key is the server's own: a password change
    # never revokes it)
    assert (summary["accepted"], summary["still_working"]) == ([], []), summary
    # the poller really spanned the start: refused connections first, then the server's refusals
    assert counts["http_closed"] > 0 and counts["http_refused"] > 0, counts
    assert counts["client_refused"] > 0, counts
