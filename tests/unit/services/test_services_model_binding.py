"""The aggregator applies a delta only to the base model its factory signed it was trained from."""

from __future__ import annotations

import torch
from federation.campaign import CampaignConfig
from federation.runtime.service import CheckedTransaction
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.messages import parse_payload

from services.aggregator.handlers import build_service as build_aggregator

CID = "binding"


def _handle(service, store: SqliteStore, kind: str, payload: dict) -> None:
    with store.transaction() as tx:  # as the runner calls a handler
        _, handler = service.handler_of(kind)
        handler(CheckedTransaction(tx, service.name), parse_payload(kind, payload), None)


def _screened(ds: str, version: int, value: float) -> dict:
    return {
        "campaign_id": CID, "round_num": 2, "datasite_id": ds, "model_version": version,
        "delta": {"w": torch.full((4,), value)}, "num_samples": 10, "weight": 10.0,
        "metrics": {}, "verdict": {"accepted": True, "reputation": 1.0},
    }  # fmt: skip


def test_when_a_delta_was_signed_for_another_base_model__the_aggregator_rejects_it():
    """A compromised connector hands a factory an old global model (version 0) in round 2."""
    service, store = build_aggregator(), SqliteStore()
    cfg = CampaignConfig.model_validate(
        {
            "campaign_id": CID,
            "quorum": 1,
            "privacy": {"enabled": False},
            "robustness": {"min_clients": 2},
        }  # a and b: a screened cohort of two
    )
    _handle(service, store, "campaign.start", {"campaign_id": CID, "config": cfg.to_payload()})
    _handle(service, store, "round.open", {"campaign_id": CID, "round_num": 2, "model_version": 1,
                                           "global_model": {"w": torch.zeros(4)}})  # fmt: skip
    _handle(service, store, "round.close",
            {"campaign_id": CID, "round_num": 2, "expected": ["a", "b"], "failed": {}})  # fmt: skip
    _handle(service, store, "update.screened", _screened("a", 1, 1.0))
    _handle(service, store, "update.screened", _screened("b", 0, 100.0))
    (done,) = [i.payload for i in store.pending_outbox(100) if i.msg_type == "round.completed"]
    assert done["participants"] == ["a"]
    assert done["rejected"] == {"b": "stale_model"}
    assert torch.allclose(done["global_model"]["w"], torch.ones(4))
