"""Campaign client: publish campaign.start, await its answer, follow events until campaign.completed."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from federation.bus.base import Delivery
from federation.campaign import CampaignConfig
from federation.errors import CampaignRefused, ClaimError, ConfigError, PdmFedError
from federation.wire.contracts import Role, consumed_keys

__all__ = ["CampaignClient", "CampaignRecord", "EVENT_KEYS"]

log = logging.getLogger(__name__)

#: What the orchestrator follows (its contracts; not the heavy update traffic).
EVENT_KEYS = consumed_keys(Role.ORCHESTRATOR)


@dataclass
class CampaignRecord:
    """Everything the orchestrator saw of one campaign."""

    campaign_id: str
    rounds: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    statuses: list[dict] = field(default_factory=list)
    opened: dict[int, float] = field(default_factory=dict)
    completed: dict | None = None
    final_model: dict | None = None
    #: The campaign's federated normalisation statistics (round 0's result, from round.open).
    normalizer: dict | None = None
    #: How round 0 released them (round.open's ``normalizer_privacy``; None: not stated).
    normalizer_privacy: dict | None = None
    #: Factories whose statistics round 0 left out -> reason code (round.open).
    normalizer_left_out: dict[str, str] = field(default_factory=dict)
    #: The model round 1 starts from (round 0's model: the initial one).
    initial_model: dict | None = None
    event_errors: int = 0
    #: The id of the campaign.start this orchestrator published (None: it follows, --resume).
    start_id: str | None = None
    #: trainer-dispatch's answer to that start: campaign.accepted or campaign.rejected.
    accepted: dict | None = None
    refused: dict | None = None


class CampaignClient:
    """Starts a campaign on a bus and collects its events (sealed like every other message)."""

    def __init__(self, bus: Any, endpoint: Any) -> None:
        self.bus = bus
        self.endpoint = endpoint
        self.records: dict[str, CampaignRecord] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._answered: dict[str, asyncio.Event] = {}
        self.on_event: Callable[[str, dict, CampaignRecord], None] | None = None
        #: Set when an event came by reference and this orchestrator has no claim store to
        #: read it from: every wait ends with it (the services send models by reference).
        self.cannot_follow: ConfigError | None = None

    async def listen(self) -> None:
        """Bind a private queue to the event types (refused without sender roles)."""
        self.endpoint.require_roles()
        await self.bus.consume_events(self._on_delivery, bindings=EVENT_KEYS)

    def _record(self, cid: str) -> CampaignRecord:
        if cid not in self.records:
            self.records[cid] = CampaignRecord(cid)
            self._done.setdefault(cid, asyncio.Event())
            self._answered.setdefault(cid, asyncio.Event())
        return self.records[cid]

    def _open(self, delivery: Delivery) -> tuple[str, dict] | None:
        """Open, check and type one event; redeemed from the claim store if it came by
        reference (the endpoint's checks: signature and sender role, AEAD, checksum, digest)."""
        opened = self.endpoint.open_received(delivery)
        if opened is None:
            return None
        envelope, payload = opened
        return str(envelope.msg_type), payload.to_payload()

    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            opened = await asyncio.to_thread(self._open, delivery)
        except PdmFedError as exc:
            log.warning("event %s rejected (%s): %s", delivery.routing_key, exc.reason, exc)
            self.endpoint._count_rejection(exc.reason)
            if isinstance(exc, ClaimError) and self.endpoint.claims is None:
                self._stop_following(delivery.routing_key)
            return
        if opened is None:
            return
        self.record_event(*opened)

    def record_event(self, kind: str, p: dict) -> None:
        """Keep what one verified event (its type, its typed payload) says about its campaign."""
        cid = p.get("campaign_id") or (p.get("detail") or {}).get("campaign_id")
        if not cid:
            return
        rec = self._record(cid)
        if kind in ("campaign.accepted", "campaign.rejected"):
            # only the answer to our own start counts (not e.g. a duplicate start's refusal)
            if rec.start_id is not None and p.get("start_id") == rec.start_id:
                self._answer(cid, kind, p)
        elif kind == "round.open":
            rec.opened[int(p["round_num"])] = time.time()
            if p.get("normalizer") and rec.normalizer is None:
                rec.normalizer = dict(p["normalizer"])
                released = p.get("normalizer_privacy")
                rec.normalizer_privacy = None if released is None else dict(released)
                rec.normalizer_left_out = dict(p.get("normalizer_left_out") or {})
            if int(p["round_num"]) == 1 and p.get("global_model") and rec.initial_model is None:
                rec.initial_model = p["global_model"]
        elif kind == "round.completed":
            if not any(r["round_num"] == p["round_num"] for r in rec.rounds):
                rec.rounds.append({k: v for k, v in p.items() if k != "global_model"})
                rec.final_model = p.get("global_model") or rec.final_model
        elif kind == "update.rejected":
            rec.rejected.append({k: p[k] for k in ("round_num", "datasite_id", "reason")})
        elif kind == "datasite.status":
            rec.statuses.append(
                {"datasite_id": p["datasite_id"], "status": p["status"], **(p.get("detail") or {})}
            )
        elif kind == "campaign.completed":
            rec.completed = p
            self._done[cid].set()
        if self.on_event is not None:
            self.on_event(kind, p, rec)

    def _stop_following(self, kind: str) -> None:
        """End every wait: the services send this orchestrator events it cannot read."""
        self.cannot_follow = ConfigError(
            f"{kind} arrived by claim-check reference (PDMFED_CLAIM_MODELS) but this orchestrator"
            " has no claim store: mount the claim directory and set PDMFED_CLAIM_DIR"
        )
        for done in (*self._done.values(), *self._answered.values()):
            done.set()

    def _answer(self, cid: str, kind: str, p: dict) -> None:
        rec = self.records[cid]
        if kind == "campaign.accepted":
            rec.accepted = p
        else:
            rec.refused = p
            self._done[cid].set()
        self._answered[cid].set()

    async def start_campaign(self, cfg: CampaignConfig) -> None:
        """Publish campaign.start under a fresh start id (its answer echoes it)."""
        rec = self._record(cfg.campaign_id)
        rec.start_id = secrets.token_hex(8)
        await self.endpoint.publish(
            "campaign.start",
            {"campaign_id": cfg.campaign_id, "config": cfg.to_payload(), "start_id": rec.start_id},
        )

    async def wait_accepted(self, campaign_id: str, timeout: float) -> dict:
        """trainer-dispatch's campaign.accepted for our start; CampaignRefused when it rejected it,
        TimeoutError when no answer came within timeout seconds."""
        self._record(campaign_id)
        await asyncio.wait_for(self._answered[campaign_id].wait(), timeout)
        if self.cannot_follow is not None:
            raise self.cannot_follow
        return self._accepted_or_raise(campaign_id)

    def _accepted_or_raise(self, campaign_id: str) -> dict:
        rec = self.records[campaign_id]
        if rec.refused is not None:
            raise CampaignRefused(str(rec.refused["reason"]), reason=str(rec.refused["code"]))
        assert rec.accepted is not None
        return rec.accepted

    async def wait(self, campaign_id: str, timeout: float) -> CampaignRecord:
        """Wait for campaign.completed (TimeoutError after timeout seconds; CampaignRefused as
        soon as trainer-dispatch rejected our start)."""
        self._record(campaign_id)
        if self.cannot_follow is not None:
            raise self.cannot_follow
        await asyncio.wait_for(self._done[campaign_id].wait(), timeout)
        if self.cannot_follow is not None:
            raise self.cannot_follow
        rec = self.records[campaign_id]
        if rec.completed is None:
            self._accepted_or_raise(campaign_id)
        return rec
