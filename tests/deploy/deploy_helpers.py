"""Helpers for the offline deployment-config tests: paths, tool lookup, metric names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent

#: The metrics every service exports (docs/architecture.md): metric name -> Prometheus type.
DESIGN_METRICS = {
    "pdmfed_messages_consumed_total": "counter",
    "pdmfed_messages_published_total": "counter",
    "pdmfed_messages_rejected_total": "counter",
    "pdmfed_message_bytes_total": "counter",
    "pdmfed_handler_seconds": "histogram",
    "pdmfed_round": "gauge",
    "pdmfed_round_duration_seconds": "histogram",
    "pdmfed_datasites_connected": "gauge",
    "pdmfed_byzantine_detected_total": "counter",
    "pdmfed_client_reputation": "gauge",
    "pdmfed_dp_epsilon": "gauge",
    "pdmfed_dp_noise_applications_total": "counter",
    "pdmfed_updates_aggregated_total": "counter",
    "pdmfed_train_rmse": "gauge",
}

SERVICES = ("connector", "trainer-dispatch", "security", "aggregator")
SERVICE_QUEUES = {
    "connector": "pdmfed.connector",
    "trainer-dispatch": "pdmfed.trainer-dispatch",
    "security": "pdmfed.security",
    "aggregator": "pdmfed.aggregator",
}


def find_tool(name: str) -> str | None:
    """Path of ``name`` in the project's virtualenv or on PATH, else None."""
    candidate = VENV_BIN / name
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """The tool's path; a missing tool fails the test, except for non-root users (skip).

    scripts/install-tools.sh installs every tool these tests use; CI runs as root and calls it,
    so a missing tool there is a real failure, not a reason to skip.
    """
    path = find_tool(name)
    if path:
        return path
    message = f"{name} not found: run scripts/install-tools.sh"
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip(f"{message} (needs root to install; not running as root)")
    pytest.fail(message)


def run(
    argv: list[str],
    *,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
):
    """Run a validator and return the CompletedProcess (text mode, output captured)."""
    return subprocess.run(  # noqa: S603 - argv built from fixed tool paths
        argv,
        input=stdin,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_yaml_docs(text: str) -> list[dict]:
    """All non-empty YAML documents of ``text``."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def registered_metric_names() -> set[str] | None:
    """Sample names federation.monitoring.metrics registers, or None if it does not exist yet."""
    try:
        from federation.monitoring.metrics import Metrics
        from prometheus_client import CollectorRegistry
    except ImportError:
        return None
    registry = CollectorRegistry()
    Metrics("deploy-test", registry=registry)
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def known_metric_names() -> set[str]:
    """Series names a query may use: the registered pdmfed metrics (or the documented list if the
    metrics module does not exist yet), with histogram series expanded."""
    registered = registered_metric_names()
    if registered is not None:
        return registered
    names: set[str] = set()
    for name, kind in DESIGN_METRICS.items():
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        else:
            names.add(name)
    return names
