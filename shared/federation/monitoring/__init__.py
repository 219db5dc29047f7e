"""Observability: Prometheus metrics, health endpoints, the seed's monitors and diagnostics, reports."""

from federation.monitoring.diagnostics import (
    diagnose_connection_failures,
    diagnose_main,
    format_diagnosis,
    format_validation,
    validate_security_configuration,
    validate_security_main,
)
from federation.monitoring.health import HealthServer
from federation.monitoring.metrics import Metrics
from federation.monitoring.monitors import (
    SECURITY_LEVELS,
    CommunicationMonitor,
    SecurityMetricsDashboard,
    SecurityMetricsShapeError,
    SecurityMonitor,
)
from federation.monitoring.report import SummaryError, render_report, report_main

__all__ = [
    "Metrics",
    "HealthServer",
    "CommunicationMonitor",
    "SecurityMetricsDashboard",
    "SecurityMonitor",
    "SecurityMetricsShapeError",
    "SECURITY_LEVELS",
    "diagnose_connection_failures",
    "validate_security_configuration",
    "format_diagnosis",
    "format_validation",
    "diagnose_main",
    "validate_security_main",
    "render_report",
    "report_main",
    "SummaryError",
]
