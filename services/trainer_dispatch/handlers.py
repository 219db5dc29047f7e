"""trainer-dispatch: the round state machine (round-0 statistics, cohort, deadlines, retries, stop rules)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from federation.campaign import CampaignConfig
from federation.errors import ConfigError, StaleRoundError
from federation.runtime.service import Service, campaign_lock, campaign_scope
from federation.runtime.store import Transaction
from federation.wire.messages import (
    CampaignAccepted,
    CampaignCompleted,
    CampaignMetrics,
    CampaignRejected,
    CampaignStart,
    DatasiteStatus,
    RoundClose,
    RoundCompleted,
    RoundOpen,
    StatsPrivacy,
    StatsRejected,
    StatsScreened,
    TrainRequest,
)

from services.trainer_dispatch import state

__all__ = ["build_service", "initial_model_state", "privacy_allows_round"]

log = logging.getLogger(__name__)


def initial_model_state(cfg: CampaignConfig) -> dict[str, torch.Tensor]:
    """The campaign's starting model (``federation.ml.pretrain.initial_state``): seeded
    initialisation, or with ``training.init: public`` pre-trained on the public synthetic fleet."""
    from federation.ml.pretrain import initial_state

    return initial_state(cfg.training, cfg.seed)


def privacy_allows_round(cfg: CampaignConfig, rounds_done: int) -> bool:
    """Whether one more round stays within max_epsilon (planned with the same accountant)."""
    p = cfg.privacy
    if not p.enabled or p.max_epsilon is None or p.noise_multiplier <= 0:
        return True
    from federation.privacy.accountant import PrivacyAccountant

    acct = PrivacyAccountant(
        noise_multiplier=p.noise_multiplier,
        sampling_rate=1.0,
        delta=p.delta,
        max_epsilon=p.max_epsilon,
        method=p.accountant,
    )
    return acct.epsilon_after(rounds_done + 1) <= p.max_epsilon


#: Reason code of a factory whose round-0 statistics the robust merge left out.
OUTLIER_STATS = "outlier_stats"


def _open_stats_round(tx: Transaction, cfg: CampaignConfig, now: float) -> None:
    """Round 0: every datasite of the cohort computes its raw partition's statistics."""
    rnd = state.new_round(cfg, 0, now, 0)
    state.put_round(tx, cfg.campaign_id, rnd)
    for datasite_id in rnd["cohort"]:
        _send_stats_request(tx, cfg, rnd, datasite_id, attempt=1)
    log.info("round 0 (statistics) of %s opened: cohort %s", cfg.campaign_id, rnd["cohort"])


def _send_stats_request(tx: Transaction, cfg: CampaignConfig, rnd: dict, datasite_id: str,
                        attempt: int) -> None:  # fmt: skip
    rnd["attempts"][datasite_id] = attempt
    tx.emit("stats.request", {"campaign_id": cfg.campaign_id, "round_num": 0,
                              "datasite_id": datasite_id, "attempt": attempt},
            datasite_id=datasite_id, round_num=0)  # fmt: skip


def _finish_stats(tx: Transaction, cfg: CampaignConfig, rnd: dict, why: str, now: float) -> None:
    """Merge the statistics that came in into the campaign's normaliser (robustly: outlying
    factories left out, counts capped) and open round 1; fewer than ``quorum`` factories kept,
    or no majority agreeing, ends the campaign (nothing is trained on partial statistics)."""
    from federation.ml.data import DatasetError
    from federation.ml.fedstats import SensorStats
    from federation.ml.robust_stats import robust_merge

    cid = cfg.campaign_id
    rnd["status"], rnd["close_reason"] = "closed", why
    state.put_round(tx, cid, rnd)
    parts = {ds: tx.get(f"stats/{cid}/{ds}") for ds in sorted(rnd["trained"])}
    for ds in rnd["cohort"]:
        tx.delete(f"stats/{cid}/{ds}")
    camp = state.get_campaign(tx, cid)
    refused_by_security = dict(rnd.get("refused") or {})  # stats.rejected: signature or form
    merged, refused = None, None
    if len(parts) >= cfg.quorum:
        try:
            merged = robust_merge({ds: SensorStats.from_dict(p) for ds, p in parts.items()})
        except DatasetError as exc:  # no majority agrees: which factories lie is unknowable
            refused = str(exc)
    if merged is None or len(merged.kept) < cfg.quorum:
        left_out = {
            **refused_by_security,
            **(merged.rejected if merged else ({"*": refused} if refused else {})),
        }
        log.warning("round 0 of %s: statistics kept from %d datasites < quorum %d (%s); failed: %s;"
                    " left out: %s", cid, len(merged.kept) if merged else len(parts), cfg.quorum,
                    why, rnd["failed"], left_out)  # fmt: skip
        camp.update(status="completed", reason="no_quorum", normalizer_rejected=left_out)
        state.put_campaign(tx, cid, camp)
        tx.emit(
            "campaign.completed",
            {"campaign_id": cid, "rounds": 0, "reason": "no_quorum"},
            round_num=0,
        )
        return
    camp["normalizer"] = merged.normalizer.to_dict()
    camp["normalizer_from"] = merged.kept
    camp["normalizer_rejected"] = {**refused_by_security, **merged.rejected}
    camp["normalizer_left_out"] = {
        **{ds: why.split(":", 1)[0] for ds, why in refused_by_security.items()},
        **dict.fromkeys(merged.rejected, OUTLIER_STATS),
    }
    camp["normalizer_capped"] = merged.capped
    sp = cfg.stats_privacy
    if sp.enabled:  # each factory released its statistics once, noised at its datasite
        from federation.privacy.stats_dp import stats_epsilon

        camp["stats_privacy"] = {
            "epsilon": stats_epsilon(sp.noise_multiplier(), sp.delta), "delta": sp.delta,
            "noise_multiplier": sp.noise_multiplier(),
            "scope": "row-level (add/remove one sensor row), per factory, one release",
        }  # fmt: skip
    state.put_campaign(tx, cid, camp)
    for ds, reason in merged.rejected.items():
        log.warning("round 0 of %s: statistics of %s left out: %s", cid, ds, reason)
    log.info("round 0 of %s: statistics of %d rows/values from %s", cid, merged.count,
             ", ".join(merged.kept))  # fmt: skip
    _open_round(tx, cfg, 1, now)


def _open_round(
    tx: Transaction, cfg: CampaignConfig, round_num: int, now: float, model: dict | None = None
) -> None:
    """Open ``round_num`` on the campaign's latest model (``model``: the one just stored, so
    40 MB are not read back and decoded again)."""
    if model is None:
        model = state.get_model(tx, cfg.campaign_id)
    rnd = state.new_round(cfg, round_num, now, model["version"])
    state.put_round(tx, cfg.campaign_id, rnd)
    camp = state.get_campaign(tx, cfg.campaign_id)
    camp["round"] = round_num
    state.put_campaign(tx, cfg.campaign_id, camp)
    tx.emit(
        RoundOpen(
            campaign_id=cfg.campaign_id,
            round_num=round_num,
            model_version=model["version"],
            cohort=list(rnd["cohort"]),
            deadline_ts=float(rnd["deadline_ts"]),
            global_model=model["state_dict"],
            normalizer=camp.get("normalizer") or {},
            normalizer_privacy=_normalizer_privacy(camp),
            normalizer_left_out=dict(camp.get("normalizer_left_out") or {}),
        ),
        round_num=round_num,
    )
    for datasite_id in rnd["cohort"]:
        _send_train_request(tx, cfg, rnd, datasite_id, model, attempt=1)
    log.info("round %d of %s opened: cohort %s", round_num, cfg.campaign_id, rnd["cohort"])


def _normalizer_privacy(camp: dict) -> StatsPrivacy | None:
    """How round 0 released the campaign's statistics (None: the campaign has none)."""
    if not camp.get("normalizer"):
        return None
    spent = camp.get("stats_privacy")
    if not spent:
        return StatsPrivacy(noised=False)
    return StatsPrivacy(noised=True, epsilon=spent["epsilon"], delta=spent["delta"],
                        noise_multiplier=spent["noise_multiplier"], scope=spent["scope"])  # fmt: skip


def _send_train_request(
    tx: Transaction, cfg: CampaignConfig, rnd: dict, datasite_id: str, model: dict, attempt: int
) -> None:
    rnd["attempts"][datasite_id] = attempt
    tx.emit(
        TrainRequest(
            campaign_id=cfg.campaign_id,
            round_num=rnd["round_num"],
            datasite_id=datasite_id,
            model_version=model["version"],
            # no weights here: the connector keeps each version from round.open (one copy per
            # round on the wire instead of one per datasite)
            training_config=_training_config(
                cfg,
                rnd["round_num"],
                (state.get_campaign(tx, cfg.campaign_id) or {}).get("normalizer"),
            ),
            attempt=attempt,
        ),
        datasite_id=datasite_id,
        round_num=rnd["round_num"],
    )


def _training_config(cfg: CampaignConfig, round_num: int, normalizer: dict | None = None) -> dict:
    out = {**cfg.training.model_dump(), "seed": cfg.seed * 100_003 + round_num}
    if normalizer:  # the datasite z-scores its raw partition with the campaign's statistics
        out["normalizer"] = dict(normalizer)
    rp = cfg.record_privacy
    if rp.enabled:
        out["dp"] = {
            "noise_multiplier": rp.noise_multiplier,
            "max_grad_norm": rp.max_grad_norm,
            "delta": cfg.privacy.delta,
        }
    return out


def _close_round(tx: Transaction, cfg: CampaignConfig, rnd: dict, why: str) -> None:
    rnd["status"] = "closing"
    rnd["close_reason"] = why
    state.put_round(tx, cfg.campaign_id, rnd)
    tx.emit(
        RoundClose(
            campaign_id=cfg.campaign_id,
            round_num=rnd["round_num"],
            expected=sorted(rnd["trained"]),
            failed=dict(rnd["failed"]),
            reason=why,
        ),
        round_num=rnd["round_num"],
    )
    log.info(
        "round %d closing (%s): %d trained, %d failed",
        rnd["round_num"],
        why,
        len(rnd["trained"]),
        len(rnd["failed"]),
    )


def _maybe_close(tx: Transaction, cfg: CampaignConfig, rnd: dict) -> None:
    answered = set(rnd["trained"]) | set(rnd["failed"])
    if rnd["status"] == "open" and answered >= set(rnd["cohort"]):
        if rnd["round_num"] == 0:
            _finish_stats(tx, cfg, rnd, "all_answered", time.time())
        else:
            _close_round(tx, cfg, rnd, "all_answered")
    else:
        state.put_round(tx, cfg.campaign_id, rnd)


def _startable(msg: CampaignStart) -> CampaignConfig:
    """The campaign's config, or ConfigError saying why trainer-dispatch cannot run it."""
    cfg = CampaignConfig.from_payload(msg.config)
    if cfg.campaign_id != msg.campaign_id:
        raise ConfigError(
            f"campaign.start names campaign {msg.campaign_id} but its config {cfg.campaign_id}"
        )
    if len(cfg.datasites) < cfg.quorum:
        raise ConfigError(f"{len(cfg.datasites)} datasites < quorum {cfg.quorum}")
    cfg.check_model()  # a model that cannot train (privately) is refused before round 1
    return cfg


def _duplicate_reason(camp: dict) -> str:
    """One line for the person who started the same campaign_id twice."""
    if camp.get("status") == "running":
        return (
            f"a campaign with this campaign_id is already running (round {camp.get('round', 0)}): "
            "pass --resume to follow it, or choose a new campaign_id"
        )
    return (
        f"a campaign with this campaign_id already ran ({camp.get('status')}: "
        f"{camp.get('reason')}): choose a new campaign_id"
    )


def _reject(tx: Transaction, msg: CampaignStart, code: str, reason: str) -> None:
    cid = msg.campaign_id
    tx.emit(CampaignRejected(cid, code, reason, msg.start_id))
    log.warning("campaign.start for %s refused (%s): %s", cid, code, reason)


def on_campaign_start(tx: Transaction, msg: CampaignStart, envelope: Any) -> None:
    """Register the campaign, build the initial model, open round 0 (the factories' statistics;
    round 1 follows once they are summed); answer campaign.accepted,
    or campaign.rejected for a campaign_id already taken or a config it cannot run."""
    cid = msg.campaign_id
    camp = state.get_campaign(tx, cid)
    if camp is not None:
        _reject(tx, msg, CampaignRejected.DUPLICATE, _duplicate_reason(camp))
        return
    try:
        cfg = _startable(msg)
    except ConfigError as exc:
        _reject(tx, msg, CampaignRejected.INVALID_CONFIG, str(exc))
        return
    state.put_campaign(
        tx,
        cid,
        {
            "config": cfg.to_payload(),
            "status": "running",
            "round": 0,
            "started_at": time.time(),
        },
    )
    state.put_model(tx, cid, {"version": 0, "state_dict": initial_model_state(cfg)})
    tx.emit(CampaignAccepted(cid, cfg.rounds, list(cfg.cohort), msg.start_id))
    _open_stats_round(tx, cfg, time.time())


def on_stats_screened(tx: Transaction, msg: StatsScreened, envelope: Any) -> None:
    """A datasite's verified round-0 statistics: keep them; all in, sum them and open round 1."""
    cid, ds = msg.campaign_id, msg.datasite_id
    camp = state.get_campaign(tx, cid)
    rnd = state.get_round(tx, cid, 0)
    if camp is None or rnd is None or rnd["status"] != "open":
        raise StaleRoundError(f"statistics for {cid} round 0, which is not open")
    if ds not in rnd["cohort"] or msg.attempt != rnd["attempts"].get(ds, 1):
        return  # not asked, or an answer to a superseded attempt
    cfg = CampaignConfig.from_payload(camp["config"])
    tx.put(f"stats/{cid}/{ds}", dict(msg.stats))
    if ds not in rnd["trained"]:
        rnd["trained"].append(ds)
    rnd["failed"].pop(ds, None)
    _maybe_close(tx, cfg, rnd)


def on_stats_rejected(tx: Transaction, msg: StatsRejected, envelope: Any) -> None:
    """Security refused a datasite's statistics: it answered (not retried: the same factory would
    send the same statistics); all answered, merge the rest and open round 1, or end no_quorum."""
    cid, ds = msg.campaign_id, msg.datasite_id
    camp = state.get_campaign(tx, cid)
    rnd = state.get_round(tx, cid, 0)
    if camp is None or rnd is None or rnd["status"] != "open":
        raise StaleRoundError(f"refused statistics for {cid} round 0, which is not open")
    if ds not in rnd["cohort"] or ds in rnd["trained"] or msg.attempt != rnd["attempts"].get(ds, 1):
        return  # not asked, already counted, or an answer to a superseded attempt
    why = f"{msg.reason}: {msg.why}" if msg.why else msg.reason
    log.warning("round 0 of %s: security refused the statistics of %s (%s)", cid, ds, why)
    rnd["failed"][ds] = why
    rnd.setdefault("refused", {})[ds] = why
    _maybe_close(tx, CampaignConfig.from_payload(camp["config"]), rnd)


def on_datasite_status(tx: Transaction, msg: DatasiteStatus, envelope: Any) -> None:
    """A datasite finished (trained) or failed its training for a round; retry or close."""
    detail = msg.detail
    cid, round_num = detail.campaign_id, detail.round_num
    if cid is None or round_num is None:
        return  # a plain health change: nothing for the round machine
    camp = state.get_campaign(tx, cid)
    rnd = state.get_round(tx, cid, int(round_num))
    if camp is None or rnd is None or rnd["status"] != "open":
        raise StaleRoundError(f"status for {cid} round {round_num}, which is not open")
    cfg = CampaignConfig.from_payload(camp["config"])
    ds = msg.datasite_id
    if ds not in rnd["cohort"]:
        return
    status = msg.status
    attempt = 1 if detail.attempt is None else detail.attempt
    if attempt != rnd["attempts"].get(ds, 1):
        return  # an answer to a superseded attempt
    if rnd["round_num"] == 0 and (status == "trained" or ds in (rnd.get("refused") or {})):
        return  # round 0 counts a datasite once security verified (or refused) its statistics
    if status == "trained":
        if ds not in rnd["trained"]:
            rnd["trained"].append(ds)
        rnd["failed"].pop(ds, None)
    elif status == "failed":
        error = detail.error or "unknown error"
        if attempt <= cfg.max_retries and time.time() < rnd["deadline_ts"]:
            log.warning(
                "round %d: %s failed (%s); retry %d", rnd["round_num"], ds, error, attempt + 1
            )
            if rnd["round_num"] == 0:
                _send_stats_request(tx, cfg, rnd, ds, attempt + 1)
            else:
                _send_train_request(tx, cfg, rnd, ds, state.get_model(tx, cid), attempt + 1)
        else:
            rnd["failed"][ds] = error
    _maybe_close(tx, cfg, rnd)


def on_round_completed(tx: Transaction, msg: RoundCompleted, envelope: Any) -> None:
    """Record the new global model; open the next round or end the campaign."""
    cid, round_num = msg.campaign_id, msg.round_num
    camp = state.get_campaign(tx, cid)
    rnd = state.get_round(tx, cid, round_num)
    if camp is None or rnd is None or rnd["status"] == "closed":
        raise StaleRoundError(f"completion for {cid} round {round_num}, which is closed or unknown")
    cfg = CampaignConfig.from_payload(camp["config"])
    rnd["status"] = "closed"
    state.put_round(tx, cid, rnd)
    model = None
    if msg.global_model:
        model = {"version": msg.model_version, "state_dict": msg.global_model}
        state.put_model(tx, cid, model, received=envelope)
    metrics = msg.metrics
    rmse = metrics.rmse
    reason = None
    if msg.status == "budget_exhausted":
        reason = "privacy_budget"
    elif msg.status == "no_quorum":
        reason = "no_quorum"  # a round without enough screened updates ends the campaign: nothing fails open
    elif round_num >= cfg.rounds:
        reason = "max_rounds"
    elif cfg.target_rmse is not None and rmse is not None and rmse <= cfg.target_rmse:
        reason = "target_rmse"
    elif not privacy_allows_round(cfg, round_num):
        reason = "privacy_budget"
    elif metrics.record_budget_allows_next is False:
        reason = "privacy_budget"
    if reason is None:
        _open_round(tx, cfg, round_num + 1, time.time(), model)
        return
    camp["status"] = "completed"
    camp["reason"] = reason
    state.put_campaign(tx, cid, camp)
    tx.emit(
        CampaignCompleted(
            campaign_id=cid,
            rounds=round_num,
            reason=reason,
            final_metrics=CampaignMetrics.of_round(metrics, msg.epsilon),
        ),
        round_num=round_num,
    )
    log.info("campaign %s completed after %d rounds: %s", cid, round_num, reason)


def on_tick(tx: Transaction, now: float) -> None:
    """Close every open round whose deadline passed, with whoever answered."""
    for cid in state.running_campaigns(tx):
        tx.lock(campaign_lock(cid))  # replicas tick too: the campaign's latest state, one at a time
        camp = state.get_campaign(tx, cid)
        if camp is None or camp.get("status") != "running":
            continue
        rnd = state.get_round(tx, cid, int(camp["round"]))
        if rnd is not None and rnd["status"] == "open" and now >= rnd["deadline_ts"]:
            cfg = CampaignConfig.from_payload(camp["config"])
            for ds in rnd["cohort"]:
                if ds not in rnd["trained"] and ds not in rnd["failed"]:
                    rnd["failed"][ds] = "deadline"
            if rnd["round_num"] == 0:
                _finish_stats(tx, cfg, rnd, "deadline", now)
            else:
                _close_round(tx, cfg, rnd, "deadline")


def observe(metrics: Any, store: Any, campaign_id: str | None) -> None:
    """Export the campaigns' lifecycle gauges from dispatch's own state (all of them at start)."""
    from federation.runtime.observe import observe_campaign

    with store.transaction() as tx:
        ids = (
            [campaign_id]
            if campaign_id is not None
            else [key.removeprefix("campaign/") for key in tx.keys("campaign/")]
        )
        for cid in ids:
            camp = state.get_campaign(tx, cid)
            if camp is None:
                continue
            rnd = state.get_round(tx, cid, int(camp.get("round") or 0))
            observe_campaign(
                metrics,
                CampaignConfig.from_payload(camp["config"]),
                running=camp.get("status") == "running",
                round_num=int(camp.get("round") or 0),
                round_opened_at=None if rnd is None else float(rnd["opened_at"]),
            )


def build_service(queue: str = "pdmfed.trainer-dispatch", tick_interval_s: float = 0.5) -> Service:
    """The trainer-dispatch service."""
    return Service(
        name="trainer-dispatch",
        queue=queue,
        handlers={
            CampaignStart: on_campaign_start,
            DatasiteStatus: on_datasite_status,
            RoundCompleted: on_round_completed,
            StatsScreened: on_stats_screened,
            StatsRejected: on_stats_rejected,
        },
        tick=on_tick,
        tick_interval_s=tick_interval_s,
        observe=observe,
        lock_scope=campaign_scope,  # a round's answers and the next round share the campaign record
    )
