"""Domain metrics derived from what a service publishes and handles (after its commit, never inside it)."""

from __future__ import annotations

from typing import Any

__all__ = ["observe_emitted", "observe_campaign", "dp_budgets"]


def dp_budgets(cfg: Any) -> dict[str, float]:
    """The campaign's privacy budgets by level (`client`, `record`); a level without one is absent."""
    out: dict[str, float] = {}
    if cfg.privacy.enabled and cfg.privacy.max_epsilon is not None:
        out["client"] = float(cfg.privacy.max_epsilon)
    if cfg.record_privacy.enabled and cfg.record_privacy.max_epsilon is not None:
        out["record"] = float(cfg.record_privacy.max_epsilon)
    return out


def observe_campaign(
    metrics: Any,
    cfg: Any,
    *,
    running: bool,
    round_num: int | None = None,
    round_opened_at: float | None = None,
) -> None:
    """The campaign-level gauges trainer-dispatch owns: running, round, deadline and budgets."""
    if metrics is None:
        return
    cid = cfg.campaign_id
    metrics.campaign_running.labels(campaign=cid).set(1 if running else 0)
    metrics.round_deadline.labels(campaign=cid).set(float(cfg.round_timeout_s))
    for level, budget in dp_budgets(cfg).items():
        metrics.dp_max_epsilon.labels(campaign=cid, level=level).set(budget)
    if round_num is not None:
        metrics.round.labels(campaign=cid).set(int(round_num))
    if round_opened_at is not None:
        metrics.round_opened.labels(campaign=cid).set(float(round_opened_at))


def observe_emitted(metrics: Any, msg_type: str, payload: dict) -> None:
    """Update the domain gauges and counters from one published message, labelled by campaign."""
    if metrics is None:
        return
    cid = str(payload.get("campaign_id") or "")
    if msg_type == "round.open":
        metrics.round.labels(campaign=cid).set(int(payload["round_num"]))
    elif msg_type == "campaign.completed":
        metrics.campaign_running.labels(campaign=cid).set(0)
    elif msg_type == "round.completed":
        m = payload.get("metrics") or {}
        metrics.round.labels(campaign=cid).set(int(payload["round_num"]))
        if m.get("duration_s") is not None:
            metrics.round_duration.labels(campaign=cid).observe(float(m["duration_s"]))
        metrics.updates_aggregated.labels(campaign=cid).inc(len(payload.get("participants") or []))
        status = payload.get("status") or "aggregated"
        if status != "aggregated":
            metrics.rounds_failed.labels(reason=status).inc()
        if m.get("rmse") is not None:
            metrics.train_rmse.labels(campaign=cid).set(float(m["rmse"]))
        if payload.get("epsilon") is not None:
            metrics.dp_epsilon.labels(campaign=cid, level="client").set(float(payload["epsilon"]))
        if m.get("record_epsilon_max") is not None:
            metrics.dp_epsilon.labels(campaign=cid, level="record").set(
                float(m["record_epsilon_max"])
            )
        if m.get("record_epsilon"):
            metrics.dp_noise_applications.labels(campaign=cid).inc(len(m["record_epsilon"]))
        if float(m.get("noise_std") or 0.0) > 0:
            metrics.dp_noise_applications.labels(campaign=cid).inc()
        for ds, rep in (m.get("reputation") or {}).items():
            metrics.client_reputation.labels(campaign=cid, datasite_id=ds).set(float(rep))
    elif msg_type == "update.rejected":
        ds = payload["datasite_id"]
        if payload.get("reason") == "byzantine":
            metrics.byzantine_detected.labels(campaign=cid, datasite_id=ds).inc()
        rep = (payload.get("detail") or {}).get("reputation")
        if rep is not None:
            metrics.client_reputation.labels(campaign=cid, datasite_id=ds).set(float(rep))
    elif msg_type == "update.screened":
        ds = payload["datasite_id"]
        metrics.byzantine_detected.labels(campaign=cid, datasite_id=ds)  # the series exists at 0
        verdict = payload.get("verdict") or {}
        if verdict.get("reputation") is not None:
            metrics.client_reputation.labels(campaign=cid, datasite_id=ds).set(
                float(verdict["reputation"])
            )
        if verdict.get("local_noise"):
            metrics.dp_noise_applications.labels(campaign=cid).inc()
