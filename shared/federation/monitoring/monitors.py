"""Monitors: datasite connectivity, the security dashboard and round security levels."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from federation.errors import PdmFedError
from federation.monitoring.metrics import DEFAULT_CAMPAIGN

__all__ = [
    "SecurityMetricsShapeError",
    "CommunicationMonitor",
    "SecurityMetricsDashboard",
    "SecurityMonitor",
    "SECURITY_LEVELS",
    "HISTORY_LIMIT",
]

#: Security levels, lowest first (see SecurityMonitor for how each is reached).
SECURITY_LEVELS = ("low", "medium", "high", "critical")
#: Connectivity reports kept by CommunicationMonitor (the seed's bound).
HISTORY_LIMIT = 100
_RECENT = 10


def _status_of(value: Any) -> str:
    # The seed's get_connection_status() maps id -> "connected"/"disconnected"; accept the
    # richer id -> {"status": ...} shape of get_connected_datasites() too.
    if isinstance(value, Mapping):
        value = value.get("status", "unknown")
    return str(value)


class CommunicationMonitor:
    """Tracks datasite connectivity over time from a comm manager's `get_connection_status()`."""

    def __init__(
        self, comm_manager: Any, metrics: Any = None, campaign_id: str = DEFAULT_CAMPAIGN
    ) -> None:
        self.comm_manager = comm_manager
        self.metrics = metrics
        #: The `campaign` label of pdmfed_datasites_connected/expected.
        self.campaign_id = str(campaign_id)
        self.connection_history: list[dict[str, Any]] = []

    def monitor_datasite_connectivity(self) -> dict[str, Any]:
        """Take one connectivity report (seed keys) and remember it (last 100 kept)."""
        raw = self.comm_manager.get_connection_status() or {}
        connection_status = {str(k): _status_of(v) for k, v in dict(raw).items()}
        statuses = list(connection_status.values())
        report = {
            "timestamp": time.time(),
            "total_datasites": len(connection_status),
            "connected_datasites": sum(1 for s in statuses if s == "connected"),
            "disconnected_datasites": sum(1 for s in statuses if s == "disconnected"),
            "connection_details": connection_status,
        }
        self.connection_history.append(report)
        if len(self.connection_history) > HISTORY_LIMIT:
            del self.connection_history[: len(self.connection_history) - HISTORY_LIMIT]
        if self.metrics is not None:
            self.metrics.set_connections(
                self.campaign_id, report["connected_datasites"], report["total_datasites"]
            )
        return report

    def diagnose_connectivity_issues(self) -> dict[str, Any]:
        """Judge the last 10 reports: connectivity rate, drops, and what to do about them."""
        recent = self.connection_history[-_RECENT:]
        if not recent:
            return {"status": "no_data", "recommendations": []}
        avg_connected = sum(r["connected_datasites"] for r in recent) / len(recent)
        total = recent[-1]["total_datasites"]
        rate = avg_connected / total if total > 0 else 0.0
        recommendations: list[str] = []
        if total == 0:
            recommendations.append("No datasites registered. Connect to the factory datasites.")
        else:
            if rate < 0.5:
                recommendations.append(
                    "Low connectivity rate detected. Check network infrastructure."
                )
            if rate < 0.8:
                recommendations.append(
                    "Moderate connectivity issues. Consider increasing connection timeouts."
                )
        drops = sum(
            1
            for i in range(1, len(recent))
            if recent[i]["connected_datasites"] < recent[i - 1]["connected_datasites"]
        )
        if drops > len(recent) * 0.3:
            recommendations.append(
                "Frequent disconnection events detected. Investigate datasite stability."
            )
        down = sorted(k for k, v in recent[-1]["connection_details"].items() if v != "connected")
        if down:
            recommendations.append(f"Not connected now: {', '.join(down)}.")
        if total == 0 or rate < 0.5:
            status = "critical"
        elif rate < 0.8 or drops > len(recent) * 0.3 or down:
            status = "degraded"
        else:
            status = "healthy"
        return {
            "status": status,
            "connectivity_rate": rate,
            "avg_connected_datasites": avg_connected,
            "disconnection_events": drops,
            "currently_disconnected": down,
            "reports_analyzed": len(recent),
            "recommendations": recommendations,
        }


# --- security dashboard -------------------------------------------------------------------
class SecurityMetricsShapeError(PdmFedError):
    """get_security_metrics() did not return the seed's shape (a missing or non-numeric key)."""

    reason = "malformed"


_TOP_KEYS = (
    "security_level",
    "encryption_enabled",
    "differential_privacy_enabled",
    "byzantine_fault_tolerance_enabled",
    "noise_multiplier",
    "client_reputation_summary",
    "security_metrics",
)
_COUNTER_KEYS = (
    "encrypted_messages",
    "authentication_checks",
    "security_violations",
    "dp_noise_applications",
    "byzantine_attacks_detected",
    "clients_filtered",
)


def _checked(metrics: Any) -> Mapping[str, Any]:
    if not isinstance(metrics, Mapping):
        raise SecurityMetricsShapeError(
            f"security metrics: expected a mapping, got {type(metrics).__name__}"
        )
    missing = [k for k in _TOP_KEYS if k not in metrics]
    inner = metrics.get("security_metrics")
    if isinstance(inner, Mapping):
        missing += [f"security_metrics.{k}" for k in _COUNTER_KEYS if k not in inner]
        bad = [k for k in _COUNTER_KEYS if k in inner and not isinstance(inner[k], int | float)]
    else:
        bad = ["security_metrics"]
    if not isinstance(metrics.get("noise_multiplier", 0), int | float):
        bad.append("noise_multiplier")
    if missing or bad:
        raise SecurityMetricsShapeError(
            "security metrics do not follow the seed's shape: "
            + ", ".join([f"missing {k}" for k in missing] + [f"non-numeric {k}" for k in bad])
        )
    return metrics


def _find_number(metrics: Mapping[str, Any], *names: str) -> float | None:
    for scope in (metrics, metrics.get("privacy") or {}, metrics.get("security_metrics") or {}):
        if not isinstance(scope, Mapping):
            continue
        for name in names:
            value = scope.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


class SecurityMetricsDashboard:
    """The seed's security dashboard over `secure_comm.get_security_metrics()`, with advice.

    Health scores are the seed's formulas. Recommendations follow from the numbers:
    violations → keys/replay; ε at ≥ `epsilon_warn_fraction` of the budget → stop or raise
    noise; DP/BFT/encryption off → enable; a client under `reputation_threshold` → investigate.
    """

    def __init__(
        self,
        secure_comm_manager: Any,
        *,
        reputation_threshold: float = 0.3,
        epsilon_warn_fraction: float = 0.8,
    ) -> None:
        self.secure_comm = secure_comm_manager
        self.reputation_threshold = reputation_threshold
        self.epsilon_warn_fraction = epsilon_warn_fraction

    def generate_security_dashboard(self) -> dict[str, Any]:
        """Build the dashboard (seed keys) from the manager's current security metrics."""
        m = _checked(self.secure_comm.get_security_metrics())
        sm = m["security_metrics"]
        epsilon = _find_number(m, "epsilon", "dp_epsilon", "epsilon_spent")
        max_epsilon = _find_number(m, "max_epsilon", "epsilon_budget", "privacy_budget")
        reputations = self._reputations(m)
        return {
            "security_overview": {
                "overall_security_level": m["security_level"],
                "encryption_enabled": m["encryption_enabled"],
                "differential_privacy_enabled": m["differential_privacy_enabled"],
                "byzantine_fault_tolerance_enabled": m["byzantine_fault_tolerance_enabled"],
            },
            "encryption_metrics": {
                "health_score": self._calculate_encryption_health(m),
                "encrypted_messages": sm["encrypted_messages"],
                "authentication_checks": sm["authentication_checks"],
                "security_violations": sm["security_violations"],
            },
            "privacy_metrics": {
                "health_score": self._calculate_privacy_health(m),
                "noise_applications": sm["dp_noise_applications"],
                "noise_multiplier": m["noise_multiplier"],
                "privacy_level": "high" if m["noise_multiplier"] > 1.0 else "medium",
                "epsilon": epsilon,
                "max_epsilon": max_epsilon,
            },
            "byzantine_tolerance_metrics": {
                "health_score": self._calculate_byzantine_health(m),
                "attacks_detected": sm["byzantine_attacks_detected"],
                "clients_filtered": sm["clients_filtered"],
                "reputation_summary": m["client_reputation_summary"],
            },
            "recommendations": self._generate_security_recommendations(
                m, epsilon=epsilon, max_epsilon=max_epsilon, reputations=reputations
            ),
        }

    def _reputations(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        report_fn = getattr(self.secure_comm, "get_client_reputation_report", None)
        source: Any = None
        if callable(report_fn):
            source = (report_fn() or {}).get("client_reputations")
        if not isinstance(source, Mapping):
            source = metrics.get("client_reputation_summary")
        if not isinstance(source, Mapping):
            return {}
        return {
            str(k): float(v)
            for k, v in source.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    @staticmethod
    def _calculate_encryption_health(metrics: Mapping[str, Any]) -> float:
        sm = metrics["security_metrics"]
        total_ops = sm["encrypted_messages"] + sm["authentication_checks"]
        if total_ops == 0:
            return 0.0
        return min(1.0, max(0.0, 1 - sm["security_violations"] / total_ops))

    @staticmethod
    def _calculate_privacy_health(metrics: Mapping[str, Any]) -> float:
        if not metrics["differential_privacy_enabled"]:
            return 0.5
        privacy_strength = min(1.0, metrics["noise_multiplier"] / 2.0)
        application_health = (
            1.0 if metrics["security_metrics"]["dp_noise_applications"] > 0 else 0.0
        )
        return (privacy_strength + application_health) / 2.0

    @staticmethod
    def _calculate_byzantine_health(metrics: Mapping[str, Any]) -> float:
        if not metrics["byzantine_fault_tolerance_enabled"]:
            return 0.5
        sm = metrics["security_metrics"]
        return min(1.0, (sm["byzantine_attacks_detected"] + sm["clients_filtered"]) / 10.0)

    def _generate_security_recommendations(
        self,
        metrics: Mapping[str, Any],
        *,
        epsilon: float | None,
        max_epsilon: float | None,
        reputations: Mapping[str, float],
    ) -> list[str]:
        sm = metrics["security_metrics"]
        out: list[str] = []
        if not metrics["encryption_enabled"]:
            out.append("Encryption is off: set PDMFED_ENCRYPTION_KEY and seal every message.")
        violations = sm["security_violations"]
        if violations > 0:
            out.append(
                f"{violations} security violation(s): check that every service holds the same "
                "encryption key and key_id (rotation), and look for replayed or expired "
                "messages (clock skew) in the dead-letter queue."
            )
        if sm["encrypted_messages"] + sm["authentication_checks"] == 0:
            out.append(
                "No encrypted traffic seen yet: the encryption health score is not meaningful."
            )
        if not metrics["differential_privacy_enabled"]:
            out.append("Differential privacy is off: enable it (enable_dp=True) to bound leakage.")
        else:
            if sm["dp_noise_applications"] == 0:
                out.append("DP is enabled but no noise has been applied yet: check the DP path.")
            if metrics["noise_multiplier"] < 1.0:
                out.append(
                    f"Noise multiplier {metrics['noise_multiplier']:g} is below 1.0: privacy per "
                    "round is weak; raise it or expect ε to grow fast."
                )
        if epsilon is not None and max_epsilon is not None and max_epsilon > 0:
            if epsilon >= max_epsilon:
                out.append(
                    f"Privacy budget exhausted: ε={epsilon:.3g} ≥ budget {max_epsilon:.3g}. "
                    "Stop the campaign."
                )
            elif epsilon >= self.epsilon_warn_fraction * max_epsilon:
                out.append(
                    f"ε={epsilon:.3g} is {epsilon / max_epsilon:.0%} of the budget "
                    f"{max_epsilon:.3g}: stop soon or raise the noise multiplier."
                )
        if not metrics["byzantine_fault_tolerance_enabled"]:
            out.append("Byzantine fault tolerance is off: enable it (enable_bft=True).")
        attacks = sm["byzantine_attacks_detected"]
        if attacks > 0:
            out.append(f"{attacks} Byzantine update(s) detected: review the flagged datasites.")
        for datasite_id, rep in sorted(reputations.items(), key=lambda kv: kv[1]):
            if rep < self.reputation_threshold:
                out.append(
                    f"Client {datasite_id} has reputation {rep:.2f} < "
                    f"{self.reputation_threshold:g}: investigate it before it rejoins a cohort."
                )
        return out


# --- round and campaign security level ----------------------------------------------------
def _level_max(levels: Iterable[str]) -> str:
    best = 0
    for level in levels:
        best = max(best, SECURITY_LEVELS.index(level) if level in SECURITY_LEVELS else 0)
    return SECURITY_LEVELS[best]


def _cohort(round_result: Mapping[str, Any]) -> list[str]:
    for key in ("participating_sites", "participants", "cohort"):
        value = round_result.get(key)
        if isinstance(value, list | tuple | set):
            return [str(v) for v in value]
    return []


class SecurityMonitor:
    """Grades each round's security from its numbers; the seed's ProductionSecureOrchestrator uses it.

    Reads from a round result: `participating_sites` (or `participants`), `byzantine_clients`
    (or `byzantine`), `rejected` ({datasite: reason}), `round_num`, and the manager's
    cumulative `security_metrics` (per-round violations are the increase since the last round).

    Levels (the highest that applies):
    - critical: Byzantine clients are a majority of the round's cohort, or the round's
      integrity/auth violations reach `violation_limit`: the defences can no longer be
      trusted to hold, so the seed's orchestrator stops the campaign.
    - high: any integrity/auth violation, Byzantine clients ≥ 1/3 of the cohort (beyond the
      f < n/3 bound robust aggregators assume), or a datasite flagged in two or more rounds
      (a persistent attacker that is contained but should be removed).
    - medium: any Byzantine client, any rejected message (replay, expired, ...), or fewer
      participants than `min_clients`.
    - low: none of the above.
    """

    def __init__(
        self,
        secure_comm: Any = None,
        *,
        violation_limit: int = 5,
        min_clients: int | None = None,
    ) -> None:
        self.secure_comm = secure_comm
        self.violation_limit = violation_limit
        self.min_clients = (
            min_clients if min_clients is not None else int(getattr(secure_comm, "min_clients", 2))
        )
        self._last_violations: int | None = None
        self._flag_counts: dict[str, int] = {}
        self.round_levels: list[str] = []

    def _round_violations(self, round_result: Mapping[str, Any]) -> int:
        metrics = round_result.get("security_metrics")
        if metrics is None and self.secure_comm is not None:
            getter = getattr(self.secure_comm, "get_security_metrics", None)
            metrics = getter() if callable(getter) else None
        if not isinstance(metrics, Mapping):
            return 0
        inner = metrics.get("security_metrics", metrics)
        total = int(inner.get("security_violations", 0) or 0) if isinstance(inner, Mapping) else 0
        previous = self._last_violations if self._last_violations is not None else 0
        self._last_violations = total
        return max(0, total - previous)

    def assess_round_security(self, round_result: Mapping[str, Any]) -> dict[str, Any]:
        """Return {'incidents', 'byzantine_attacks', 'security_level', ...} for one round."""
        round_num = round_result.get("round_num", round_result.get("round", len(self.round_levels)))
        cohort = _cohort(round_result)
        flagged = round_result.get("byzantine_clients") or round_result.get("byzantine") or []
        byz = sorted({str(b) for b in flagged})
        rejected = dict(round_result.get("rejected") or {})
        violations = self._round_violations(round_result)
        n = len(set(cohort) | set(byz))
        incidents: list[dict[str, Any]] = []

        def incident(kind: str, severity: str, detail: str, **extra: Any) -> None:
            incidents.append(
                {
                    "round_num": round_num,
                    "type": kind,
                    "severity": severity,
                    "detail": detail,
                    **extra,
                }
            )

        for datasite_id, reason in sorted(rejected.items()):
            incident(
                "rejected_message",
                "medium",
                f"{datasite_id}: {reason}",
                datasite_id=datasite_id,
                reason=str(reason),
            )
        if violations:
            severity = "critical" if violations >= self.violation_limit else "high"
            incident(
                "integrity_violation",
                severity,
                f"{violations} security violation(s) this round",
                count=violations,
            )
        attacks = []
        for datasite_id in byz:
            self._flag_counts[datasite_id] = self._flag_counts.get(datasite_id, 0) + 1
            attacks.append(
                {
                    "round_num": round_num,
                    "datasite_id": datasite_id,
                    "times_flagged": self._flag_counts[datasite_id],
                }
            )
        if byz and n:
            fraction = len(byz) / n
            if fraction > 0.5:
                severity = "critical"
            elif fraction >= 1 / 3:
                severity = "high"
            else:
                severity = "medium"
            incident(
                "byzantine",
                severity,
                f"{len(byz)} of {n} clients Byzantine",
                fraction=fraction,
            )
        for datasite_id in byz:
            times = self._flag_counts[datasite_id]
            if times >= 2:
                incident(
                    "repeat_attacker",
                    "high",
                    f"{datasite_id} flagged Byzantine in {times} rounds",
                    datasite_id=datasite_id,
                )
        honest = len(set(cohort) - set(byz))
        if cohort and honest < self.min_clients:
            incident(
                "small_cohort",
                "medium",
                f"{honest} honest participant(s) < min_clients {self.min_clients}",
            )
        level = _level_max(i["severity"] for i in incidents)
        self.round_levels.append(level)
        return {
            "round_num": round_num,
            "incidents": incidents,
            "byzantine_attacks": attacks,
            "security_level": level,
            "violations": violations,
        }

    def assess_campaign_security(self, campaign_results: Mapping[str, Any]) -> str:
        """The campaign's level: the worst of its incidents (and of rounds assessed here)."""
        levels = [
            i.get("severity", "low")
            for i in campaign_results.get("security_incidents") or []
            if isinstance(i, Mapping)
        ]
        if campaign_results.get("byzantine_attacks"):
            levels.append("medium")
        levels.extend(self.round_levels)
        return _level_max(levels)
