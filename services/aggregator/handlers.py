"""aggregator: collects a round's screened updates, aggregates robustly, central DP, new model versions."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from federation.campaign import CampaignConfig
from federation.errors import PrivacyBudgetExceeded, StaleRoundError
from federation.robust.pipeline import JUDGED_REASONS, quorum, screening_policy
from federation.runtime.service import Service
from federation.runtime.store import Transaction
from federation.wire.messages import (
    CampaignRejected,
    CampaignStart,
    Quorum,
    RoundClose,
    RoundCompleted,
    RoundMetrics,
    RoundOpen,
    TrainingMetrics,
    UpdateRejected,
    UpdateScreened,
)

from services.campaign_refusal import forget_refused_campaign

__all__ = ["build_service"]

log = logging.getLogger(__name__)


def _new_global_model(
    cfg: CampaignConfig,
    base: dict[str, torch.Tensor],
    accepted: list[dict],
    accountant: Any,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """``base`` plus the pipeline's aggregate of the accepted deltas, and the noise std it added.

    The rule is ``federation.robust.aggregation_rule``'s: the campaign's robust rule, wrapped in
    ``CentralDP`` (clip, aggregate unweighted, noise z x the rule's own sensitivity, one round
    spent on ``accountant`` first) under central DP.
    """
    from federation.robust import aggregation_rule

    p = cfg.privacy
    rule = aggregation_rule(cfg.robustness, p, accountant=accountant, generator=generator)
    if p.enabled and p.mode == "local" and p.noise_multiplier > 0 and accountant is not None:
        accountant.spend_round()  # security noised every released update once this round
    agg = rule.aggregate(
        [u["delta"] for u in accepted], [float(u.get("weight", 1.0)) for u in accepted]
    )
    new = {}
    for k, v in base.items():
        if v.is_floating_point():
            new[k] = (v + agg[k].to(v.dtype)).contiguous()
        else:
            new[k] = v.clone()
    return new, float(getattr(rule, "last_noise_std", 0.0))


def _quorum(
    cfg: CampaignConfig, verdicts: dict[str, dict], accepted: list[dict]
) -> tuple[bool, dict]:
    """Whether a round may publish a model (``federation.robust.pipeline.quorum``): at least
    ``quorum`` accepted updates, taken from a cohort of at least ``robustness.min_clients``
    screened ones (when screening is on)."""
    screened = sum(1 for v in verdicts.values() if v.get("screened"))
    q = quorum(len(accepted), screened, cfg.quorum, screening_policy(cfg.robustness))
    return q.met, q.to_dict()


def _weighted(accepted: list[dict], key: str) -> float | None:
    """A training figure (rmse, loss) of the accepted updates, weighted by their samples."""
    figures = [
        (getattr(TrainingMetrics.from_payload(u["metrics"]), key), u.get("num_samples", 1))
        for u in accepted
    ]
    pairs = [(m, n) for m, n in figures if m is not None]
    total = sum(n for _, n in pairs)
    return None if not pairs or total <= 0 else float(sum(m * n for m, n in pairs) / total)


def _record_privacy(tx: Transaction, cfg: CampaignConfig, verdicts: dict[str, dict]) -> dict:
    """Compose each factory's DP-SGD spend (accepted or not: the release happened) into its ledger."""
    rp = cfg.record_privacy
    if not rp.enabled:
        return {}
    from federation.privacy import RecordLevelLedger

    raw = tx.get(f"record-ledger/{cfg.campaign_id}")
    ledger = (
        RecordLevelLedger.from_dict(raw)
        if raw
        else RecordLevelLedger(delta=cfg.privacy.delta, method=rp.accountant)
    )
    last: dict[str, dict] = {}
    for ds, v in sorted(verdicts.items()):
        dp = TrainingMetrics.from_payload(v["metrics"]).dp
        if dp is None:
            continue
        z, q, steps = dp.noise_multiplier, dp.sample_rate, dp.steps
        ledger.spend(ds, z, q, steps)
        last[ds] = {"z": z, "q": q, "steps": steps}
    tx.put(f"record-ledger/{cfg.campaign_id}", ledger.to_dict())
    eps = {ds: float(ledger.epsilon(ds)) for ds in ledger.datasites()}
    allows_next = True
    if rp.max_epsilon is not None:
        allows_next = not any(
            ledger.would_exceed(rp.max_epsilon, ds, p["z"], p["q"], p["steps"])
            for ds, p in last.items()
        )
    return {
        "record_epsilon": eps,
        "record_epsilon_max": max(eps.values(), default=0.0),
        "record_budget_allows_next": allows_next,
    }


def build_service(queue: str = "pdmfed.aggregator") -> Service:
    """The aggregator service."""
    from federation.privacy.accountant import PrivacyAccountant

    def _accountant(tx: Transaction, cfg: CampaignConfig) -> PrivacyAccountant | None:
        p = cfg.privacy
        if not p.enabled:
            return None
        raw = tx.get(f"ledger/{cfg.campaign_id}")
        if raw is not None:
            return PrivacyAccountant.from_dict(raw)
        return PrivacyAccountant(
            noise_multiplier=p.noise_multiplier,
            sampling_rate=1.0,
            delta=p.delta,
            max_epsilon=p.max_epsilon,
            method=p.accountant,
        )

    def _round(tx: Transaction, cid: str, rnd: int) -> dict:
        r = tx.get(f"round/{cid}/{rnd:06d}")
        if r is None:
            # round.open not seen yet (out-of-order redelivery): transient, so the bus requeues it
            raise LookupError(f"{cid} round {rnd} is not open here yet")
        if r["status"] == "closed":
            raise StaleRoundError(f"{cid} round {rnd} is closed")
        return r

    def on_campaign_start(tx: Transaction, msg: CampaignStart, envelope: Any) -> None:
        cfg = CampaignConfig.from_payload(msg.config)
        if tx.get(f"campaign/{cfg.campaign_id}") is None:
            tx.put(f"campaign/{cfg.campaign_id}", cfg.to_payload())

    def on_round_open(tx: Transaction, msg: RoundOpen, envelope: Any) -> None:
        cid, rnd = msg.campaign_id, msg.round_num
        if tx.get(f"round/{cid}/{rnd:06d}") is not None:
            return
        tx.put(f"base/{cid}/{rnd:06d}", msg.global_model)  # big: kept apart from the round record
        tx.put(
            f"round/{cid}/{rnd:06d}",
            {
                "status": "open",
                "model_version": msg.model_version,
                "opened_at": time.time(),
                "expected": None,
            },
        )

    def on_round_close(tx: Transaction, msg: RoundClose, envelope: Any) -> None:
        cid, rnd = msg.campaign_id, msg.round_num
        r = _round(tx, cid, rnd)
        if r["expected"] is None:
            r["expected"] = list(msg.expected)
            r["failed"] = dict(msg.failed)
            tx.put(f"round/{cid}/{rnd:06d}", r)
        _maybe_aggregate(tx, cid, rnd)

    def on_verdict(accepted: bool):
        def handle(tx: Transaction, msg: UpdateScreened | UpdateRejected, envelope: Any) -> None:
            cid, rnd, ds = msg.campaign_id, msg.round_num, msg.datasite_id
            r = _round(tx, cid, rnd)
            key = f"verdict/{cid}/{rnd:06d}/{ds}"
            if tx.has(key):
                log.info("duplicate verdict for %s round %d ignored", ds, rnd)
                return
            if isinstance(msg, UpdateScreened):
                record = {"datasite_id": ds, "accepted": True, "screened": True, "delta": msg.delta,
                          "model_version": msg.model_version, "num_samples": msg.num_samples,
                          "weight": msg.weight, "metrics": msg.metrics.to_payload(),
                          "reputation": msg.verdict.reputation}  # fmt: skip
            else:  # judged by security's screening (counts toward min_clients), or refused before
                record = {
                    "datasite_id": ds,
                    "accepted": False,
                    "reason": msg.reason,
                    "screened": msg.reason in JUDGED_REASONS,
                    "metrics": msg.detail.metrics.to_payload(),
                    "reputation": msg.detail.reputation,
                }
            base_version = int(r["model_version"])
            if accepted and msg.model_version != base_version:
                # The factory signed the version it trained from: a delta of another base model
                # (one the connector handed it, or an old one) would be applied to this one.
                log.warning("update of %s for round %d was trained from model version %s, the"
                            " round's base is %d: rejected", ds, rnd, msg.model_version,
                            base_version)  # fmt: skip
                record.update(accepted=False, reason="stale_model")
                record.pop("delta", None)
            # By reference: the body it arrived in is kept as the stored delta (no second copy).
            kept = tx.keep_received(envelope, {"delta": msg.delta}) if "delta" in record else None
            tx.put(key, record, kept=kept)
            _maybe_aggregate(tx, cid, rnd)

        return handle

    def _maybe_aggregate(tx: Transaction, cid: str, rnd: int) -> None:
        r = _round(tx, cid, rnd)
        if r["expected"] is None:
            return
        if not all(tx.has(f"verdict/{cid}/{rnd:06d}/{ds}") for ds in r["expected"]):
            return  # still waiting (checked without decoding any tensors)
        verdicts = {ds: tx.get(f"verdict/{cid}/{rnd:06d}/{ds}") for ds in r["expected"]}
        cfg = CampaignConfig.from_payload(tx.get(f"campaign/{cid}"))
        accepted = [v for v in verdicts.values() if v["accepted"]]
        rejected = {ds: v["reason"] for ds, v in verdicts.items() if not v["accepted"]}
        byzantine = sorted(ds for ds, why in rejected.items() if why == "byzantine")
        acct = _accountant(tx, cfg)
        base = tx.get(f"base/{cid}/{rnd:06d}")
        status = "aggregated"
        gen = torch.Generator().manual_seed(cfg.seed * 104_729 + rnd)
        noise_std = 0.0
        quorate, quorum = _quorum(cfg, verdicts, accepted)
        if not quorate:
            # too few screened updates: nothing is aggregated, spent or published this round
            new = {}
            status = "no_quorum"
            log.warning(
                "round %d publishes no model: %d accepted of %d screened updates, quorum %d "
                "from at least %d screened",
                rnd,
                quorum["accepted"],
                quorum["screened"],
                quorum["required"],
                quorum["min_clients"],
            )
        else:
            try:
                new, noise_std = _new_global_model(cfg, base, accepted, acct, gen)
            except PrivacyBudgetExceeded as exc:
                log.warning("round %d refused: %s", rnd, exc)
                new = {k: v.clone() for k, v in base.items()}
                status = "budget_exhausted"
        if acct is not None:
            tx.put(f"ledger/{cid}", acct.to_dict())
        version = int(r["model_version"]) + (1 if status == "aggregated" else 0)
        metrics = RoundMetrics(
            rmse=_weighted(accepted, "rmse"),
            loss=_weighted(accepted, "loss"),
            num_samples=int(sum(int(u.get("num_samples", 0)) for u in accepted)),
            duration_s=time.time() - float(r["opened_at"]),
            noise_std=float(noise_std),
            reputation={
                ds: float(v["reputation"])
                for ds, v in verdicts.items()
                if v.get("reputation") is not None
            },
            quorum=Quorum(**quorum),
            **_record_privacy(tx, cfg, verdicts),
        )
        epsilon = acct.epsilon if acct is not None else None
        r["status"] = "closed"
        tx.put(f"round/{cid}/{rnd:06d}", r)
        tx.delete(f"base/{cid}/{rnd:06d}")
        for ds in r["expected"]:
            tx.delete(f"verdict/{cid}/{rnd:06d}/{ds}")
        tx.emit(
            RoundCompleted(
                campaign_id=cid,
                round_num=rnd,
                model_version=version,
                status=status,
                participants=sorted(v["datasite_id"] for v in accepted),
                rejected=rejected,
                failed=dict(r.get("failed", {})),
                byzantine=byzantine,
                metrics=metrics,
                epsilon=epsilon,
                global_model=new,
            ),
            round_num=rnd,
        )
        log.info(
            "round %d %s: %d accepted, rejected %s, eps=%s",
            rnd,
            status,
            len(accepted),
            rejected,
            epsilon,
        )

    return Service(
        name="aggregator",
        queue=queue,
        handlers={
            CampaignStart: on_campaign_start,
            CampaignRejected: forget_refused_campaign,
            RoundOpen: on_round_open,
            RoundClose: on_round_close,
            UpdateScreened: on_verdict(True),
            UpdateRejected: on_verdict(False),
        },
    )
