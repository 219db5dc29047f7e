"""Domain metrics derived from what a service publishes (after its commit, never inside it)."""

from __future__ import annotations

from typing import Any

__all__ = ["observe_emitted"]


def observe_emitted(metrics: Any, msg_type: str, payload: dict) -> None:
    """Update the domain gauges and counters from one published message."""
    if metrics is None:
        return
    if msg_type == "round.open":
        metrics.round.set(int(payload["round_num"]))
    elif msg_type == "round.completed":
        m = payload.get("metrics") or {}
        metrics.round.set(int(payload["round_num"]))
        if m.get("duration_s") is not None:
            metrics.round_duration.observe(float(m["duration_s"]))
        metrics.updates_aggregated.inc(len(payload.get("participants") or []))
        status = payload.get("status") or "aggregated"
        if status != "aggregated":
            metrics.rounds_failed.labels(reason=status).inc()
        if m.get("rmse") is not None:
            metrics.model_rmse.set(float(m["rmse"]))
        eps = payload.get("epsilon")
        if eps is None:
            eps = m.get("record_epsilon_max")
        if eps is not None:
            metrics.dp_epsilon.set(float(eps))
        if m.get("record_epsilon"):
            metrics.dp_noise_applications.inc(len(m["record_epsilon"]))
        if float(m.get("noise_std") or 0.0) > 0:
            metrics.dp_noise_applications.inc()
        for ds, rep in (m.get("reputation") or {}).items():
            metrics.client_reputation.labels(datasite_id=ds).set(float(rep))
    elif msg_type == "update.rejected":
        if payload.get("reason") == "byzantine":
            metrics.byzantine_detected.labels(datasite_id=payload["datasite_id"]).inc()
        rep = (payload.get("detail") or {}).get("reputation")
        if rep is not None:
            metrics.client_reputation.labels(datasite_id=payload["datasite_id"]).set(float(rep))
    elif msg_type == "update.screened":
        verdict = payload.get("verdict") or {}
        if verdict.get("reputation") is not None:
            metrics.client_reputation.labels(datasite_id=payload["datasite_id"]).set(float(verdict["reputation"]))
        if verdict.get("local_noise"):
            metrics.dp_noise_applications.inc()
