"""What trainer-dispatch persists: campaigns, rounds, the current global model."""

from __future__ import annotations

from typing import Any

from federation.campaign import CampaignConfig
from federation.runtime.store import Transaction

__all__ = [
    "get_campaign",
    "put_campaign",
    "running_campaigns",
    "get_round",
    "put_round",
    "new_round",
    "get_model",
    "put_model",
]


def get_campaign(tx: Transaction, cid: str) -> dict | None:
    """The campaign record, or None."""
    return tx.get(f"campaign/{cid}")


def put_campaign(tx: Transaction, cid: str, record: dict) -> None:
    """Save the campaign record (and its own running marker: campaigns share no record, so
    replicas may handle two campaigns at once under their own campaign locks)."""
    tx.put(f"campaign/{cid}", record)
    if record.get("status") == "running":
        tx.put(f"running/{cid}", True)
    else:
        tx.delete(f"running/{cid}")
        legacy = tx.get("running")  # stores written before the per-campaign marker
        if legacy is not None and cid in legacy:
            tx.put("running", [c for c in legacy if c != cid])


def running_campaigns(tx: Transaction) -> list[str]:
    """Ids of campaigns still running."""
    marked = {key.removeprefix("running/") for key in tx.keys("running/")}
    return sorted(marked | set(tx.get("running", [])))


def new_round(cfg: CampaignConfig, round_num: int, now: float, model_version: int) -> dict:
    """A fresh open round for the whole cohort."""
    return {
        "round_num": round_num,
        "status": "open",
        "cohort": cfg.cohort,
        "opened_at": now,
        "deadline_ts": now + cfg.round_timeout_s,
        "model_version": model_version,
        "trained": [],
        "failed": {},
        "attempts": {},
    }


def get_round(tx: Transaction, cid: str, round_num: int) -> dict | None:
    """A round record, or None."""
    return tx.get(f"round/{cid}/{round_num:06d}")


def put_round(tx: Transaction, cid: str, record: dict) -> None:
    """Save a round record."""
    tx.put(f"round/{cid}/{int(record['round_num']):06d}", record)


def get_model(tx: Transaction, cid: str) -> dict[str, Any]:
    """The current global model {version, state_dict}."""
    record = tx.get(f"model/{cid}")
    if record is not None and "global_model" in record:  # else the older {version, state_dict}
        record = {"version": record["version"], "state_dict": record["global_model"]}
    return record


def put_model(tx: Transaction, cid: str, record: dict, received: Any = None) -> None:
    """Save the current global model {version, state_dict}. ``received``: the envelope of the
    round.completed it came in; sent by reference (PDMFED_CLAIM_MODELS), that body is kept as
    its stored form instead of the tensors being written again."""
    model = {"global_model": record["state_dict"]}
    kept = tx.keep_received(received, model)
    tx.put(f"model/{cid}", {"version": record["version"], **model}, kept=kept)
