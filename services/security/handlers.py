"""security: verifies factory signatures, screens a round's updates (Byzantine, reputation), local DP."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from federation.campaign import CampaignConfig
from federation.errors import AuthError, PdmFedError, StaleRoundError
from federation.runtime.service import Service
from federation.runtime.store import Transaction
from federation.wire.claims import CLAIM_KEY, ClaimReference
from federation.wire.messages import (
    CampaignRejected,
    CampaignStart,
    RejectionDetail,
    RoundClose,
    StatsRaw,
    StatsRejected,
    TrainingMetrics,
    UpdateRaw,
    UpdateRejected,
    UpdateScreened,
    Verdict,
)

from services.campaign_refusal import forget_refused_campaign

__all__ = ["build_service"]

log = logging.getLogger(__name__)

FactoryVerifier = Callable[[dict], None]


def _cfg(tx: Transaction, cid: str) -> CampaignConfig:
    raw = tx.get(f"campaign/{cid}")
    if raw is None:
        raise StaleRoundError(f"unknown campaign {cid}")
    return CampaignConfig.from_payload(raw)


def _screen_round(
    cfg: CampaignConfig, updates: list[dict], book: Any, generator: torch.Generator | None = None
) -> tuple[list[dict], list[dict]]:
    """A round's updates through the pipeline's ``screen_cohort`` (detectors, reputation in
    ``book``, verdicts), then local DP on the accepted ones: (accepted with weights, rejected
    with reasons)."""
    from federation.privacy import privatize_update
    from federation.robust import screen_cohort
    from federation.robust.pipeline import screening_policy

    s = screen_cohort(
        [u["delta"] for u in updates],
        [u["datasite_id"] for u in updates],
        screening_policy(cfg.robustness),
        book,
        num_samples=[float(u.get("num_samples", 1)) for u in updates],
    )
    p = cfg.privacy
    local = p.enabled and p.mode == "local"
    accepted = []
    for i, w in zip(s.accepted, s.weights, strict=True):
        u = updates[i]
        delta = (
            privatize_update(u["delta"], p.clip_norm, p.noise_multiplier, generator)
            if local
            else u["delta"]
        )
        accepted.append(
            {
                **u,
                "delta": delta,
                "weight": w,
                "reputation": s.reputation[u["datasite_id"]],
                "local_noise": local and p.noise_multiplier > 0,
                "delta_unchanged": not local,
            }
        )
    rejected = [
        {
            **why,
            "datasite_id": u["datasite_id"],
            "reputation": s.reputation[u["datasite_id"]],
            "metrics": dict(u.get("metrics") or {}),
        }
        for u in updates
        if (why := s.rejected.get(u["datasite_id"])) is not None
    ]
    return accepted, rejected


#: Key of a pending update's record: the claim-check reference its body arrived by.
RECEIVED_CLAIM = "received_claim"


def _forwardable(update: dict) -> ClaimReference | None:
    """The reference to pass an accepted update on by, when its delta is the body's unchanged
    (no local DP) and it arrived by claim check: the aggregator reads the connector's body."""
    claim = update.get(RECEIVED_CLAIM)
    if claim is None or not update.get("delta_unchanged"):
        return None
    return ClaimReference.from_payload({CLAIM_KEY: claim})


def build_service(verify_factory: FactoryVerifier | None = None, queue: str = "pdmfed.security",
                  verify_stats: FactoryVerifier | None = None) -> Service:  # fmt: skip
    """The security service; verify_factory checks an update.raw's factory signature,
    verify_stats a stats.raw's."""
    from federation.robust import ReputationBook

    def on_campaign_start(tx: Transaction, msg: CampaignStart, envelope: Any) -> None:
        cfg = CampaignConfig.from_payload(msg.config)
        if tx.get(f"campaign/{cfg.campaign_id}") is None:
            tx.put(f"campaign/{cfg.campaign_id}", cfg.to_payload())

    def on_stats_raw(tx: Transaction, msg: StatsRaw, envelope: Any) -> None:
        """Round 0: pass on a factory's statistics once its signature and their form check out;
        refuse the rest with stats.rejected, so trainer-dispatch stops waiting for them."""
        from federation.ml.fedstats import SensorStats

        cid, ds = msg.campaign_id, msg.datasite_id
        _cfg(tx, cid)  # an unknown campaign is stale
        payload = msg.to_payload()
        try:
            if verify_stats is not None:
                verify_stats(payload)
            elif verify_factory is not None:  # updates are verified: statistics must be too
                raise AuthError("no verifier for factory-signed statistics is configured")
            # a malformed shape, a count, sum or sum of squares no float32 partition has, or a
            # negative variance
            SensorStats.from_dict(msg.stats)
        except PdmFedError as exc:  # invalid_stats, auth, malformed: refused, dispatch told
            log.warning("statistics from %s for %s refused (%s): %s", ds, cid, exc.reason, exc)
            tx.emit(StatsRejected(campaign_id=cid, round_num=0, datasite_id=ds, reason=exc.reason,
                                  why=str(exc)[:500], attempt=msg.attempt),
                    datasite_id=ds, round_num=0)  # fmt: skip
            return
        tx.emit("stats.screened", {"campaign_id": cid, "round_num": 0, "datasite_id": ds,
                                   "stats": dict(msg.stats), "attempt": msg.attempt},
                datasite_id=ds, round_num=0)  # fmt: skip

    def on_update_raw(tx: Transaction, msg: UpdateRaw, envelope: Any) -> None:
        cid, rnd, ds = msg.campaign_id, msg.round_num, msg.datasite_id
        payload = msg.to_payload()
        cfg = _cfg(tx, cid)
        if tx.has(f"screened/{cid}/{rnd:06d}"):
            raise StaleRoundError(f"update from {ds} for {cid} round {rnd}, already screened")
        key = f"pending/{cid}/{rnd:06d}/{ds}"
        if tx.has(key):
            log.info("duplicate update from %s for round %d ignored", ds, rnd)
            return
        if verify_factory is not None:
            try:
                verify_factory(payload)
            except AuthError as exc:
                log.warning("update from %s round %d fails its factory signature: %s", ds, rnd, exc)
                tx.put(key, {"datasite_id": ds, "invalid": str(exc)})
                _maybe_screen(tx, cfg, rnd)
                return
        # Arrived by reference: the body is kept as the stored delta (not written again) and
        # is what an accepted, unchanged update is forwarded as.
        kept = tx.keep_received(envelope, {"delta": msg.delta})
        claim = kept.ref if kept is not None else getattr(envelope, "claim", None)
        if claim is not None:
            payload[RECEIVED_CLAIM] = claim.to_payload()[CLAIM_KEY]
        tx.put(key, payload, kept=kept)
        _maybe_screen(tx, cfg, rnd)

    def on_round_close(tx: Transaction, msg: RoundClose, envelope: Any) -> None:
        cid, rnd = msg.campaign_id, msg.round_num
        cfg = _cfg(tx, cid)
        if tx.get(f"screened/{cid}/{rnd:06d}") is not None:
            return
        tx.put(f"closing/{cid}/{rnd:06d}", {"expected": list(msg.expected)})
        _maybe_screen(tx, cfg, rnd)

    def _maybe_screen(tx: Transaction, cfg: CampaignConfig, rnd: int) -> None:
        cid = cfg.campaign_id
        closing = tx.get(f"closing/{cid}/{rnd:06d}")
        if closing is None:
            return
        expected = list(closing["expected"])
        if not all(tx.has(f"pending/{cid}/{rnd:06d}/{ds}") for ds in expected):
            return  # an expected update is still in flight (checked without decoding tensors)
        pending = {ds: tx.get(f"pending/{cid}/{rnd:06d}/{ds}") for ds in expected}
        invalid = {ds: v for ds, v in pending.items() if "invalid" in v}
        valid = [v for ds, v in pending.items() if "invalid" not in v]
        raw_book = tx.get(f"reputation/{cid}")
        book = ReputationBook.from_dict(raw_book) if raw_book else ReputationBook()
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + rnd)
        accepted, rejected = _screen_round(cfg, valid, book, gen)
        rejected += [
            {"datasite_id": ds, "reason": "auth", "why": [v["invalid"]]}
            for ds, v in invalid.items()
        ]
        tx.put(f"reputation/{cid}", book.to_dict())
        for u in accepted:
            tx.emit(
                UpdateScreened(
                    campaign_id=cid,
                    round_num=rnd,
                    datasite_id=u["datasite_id"],
                    model_version=int(u.get("model_version", 0)),
                    delta=u["delta"],
                    num_samples=int(u.get("num_samples", 0)),
                    weight=float(u["weight"]),
                    metrics=TrainingMetrics.from_payload(u.get("metrics") or {}),
                    verdict=Verdict(
                        accepted=True, reputation=u["reputation"], local_noise=u["local_noise"]
                    ),
                    expected=expected,
                ),
                datasite_id=u["datasite_id"],
                round_num=rnd,
                forward=_forwardable(u),
            )
        for r in rejected:
            tx.emit(
                UpdateRejected(
                    campaign_id=cid,
                    round_num=rnd,
                    datasite_id=r["datasite_id"],
                    reason=r["reason"],
                    detail=RejectionDetail(
                        why=[str(w) for w in r.get("why", [])],
                        scores=dict(r.get("scores") or {}),
                        reputation=r.get("reputation"),
                        metrics=TrainingMetrics.from_payload(r.get("metrics") or {}),
                    ),
                    expected=expected,
                ),
                datasite_id=r["datasite_id"],
                round_num=rnd,
            )
        if rejected:
            log.warning(
                "round %d: rejected %s", rnd, {r["datasite_id"]: r["reason"] for r in rejected}
            )
        for ds in expected:
            tx.delete(f"pending/{cid}/{rnd:06d}/{ds}")
        tx.put(f"screened/{cid}/{rnd:06d}", True)

    return Service(
        name="security",
        queue=queue,
        handlers={
            CampaignStart: on_campaign_start,
            CampaignRejected: forget_refused_campaign,
            UpdateRaw: on_update_raw,
            RoundClose: on_round_close,
            StatsRaw: on_stats_raw,
        },
    )
