"""What a service does with campaign.rejected: forget the refused campaign's stored settings."""

from __future__ import annotations

from typing import Any

from federation.runtime.store import Transaction
from federation.wire.messages import CampaignRejected

__all__ = ["forget_refused_campaign"]


def forget_refused_campaign(tx: Transaction, msg: CampaignRejected, envelope: Any = None) -> bool:
    """Delete what campaign.start stored for a refused campaign; a duplicate's refusal leaves the
    running campaign's settings alone. Returns whether anything was forgotten."""
    if msg.code == CampaignRejected.DUPLICATE:
        return False
    tx.delete(f"campaign/{msg.campaign_id}")
    return True
