"""Start a real Prometheus binary that scrapes localhost /metrics ports, and query its HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRAPE_INTERVAL = "1s"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrometheusServer:
    """A running Prometheus and a helper for its HTTP API."""

    url: str
    process: subprocess.Popen

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as resp:  # noqa: S310
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query; the result vector (each item has `metric` and `value`)."""
        return self.api("/api/v1/query", query=expr)["result"]

    def wait_for(self, expr: str, *, timeout: float = 20.0, min_series: int = 1) -> list[dict]:
        """Poll ``expr`` until it returns at least ``min_series`` series; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if len(result) >= min_series:
                return result
            time.sleep(0.5)
        pytest.fail(f"Prometheus returned {len(result)} series for {expr!r} after {timeout}s")

    def targets(self) -> list[dict]:
        return self.api("/api/v1/targets")["activeTargets"]


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path:
        return path
    message = (
        "prometheus binary not found: run scripts/install-tools.sh (Debian package prometheus)"
    )
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip(message + " (needs root to install)")
    pytest.fail(message)


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"prometheus not ready after {timeout}s:\n{log.read_text()[-3000:]}")
