"""A handler's emits are checked against the contracts at commit: a malformed or forbidden one
fails its own transaction with a typed error and nothing is published."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from federation.bus.base import RequeueMessage
from federation.errors import EmitError
from federation.runtime.service import Service, ServiceRunner
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.messages import CampaignCompleted, CampaignMetrics, DatasiteStatus, RoundClose


@dataclass
class _Envelope:
    msg_id: bytes


class _Endpoint:
    """Records what the runner would publish (unit tier: no bus)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict]] = []

    async def publish(self, msg_type, payload, **kw) -> None:
        self.published.append((str(msg_type), payload))


def _runner(emit) -> tuple[ServiceRunner, SqliteStore, _Endpoint]:
    def on_status(tx, msg, envelope) -> None:
        tx.put("seen", msg.datasite_id)
        emit(tx)

    store = SqliteStore()
    endpoint = _Endpoint()
    service = Service(name="trainer-dispatch", queue="q", handlers={DatasiteStatus: on_status})
    return ServiceRunner(service, endpoint, store), store, endpoint


async def _deliver(runner: ServiceRunner) -> bytes:
    msg_id = os.urandom(16)
    await runner._on_message(
        "datasite.status", {"datasite_id": "f1", "status": "trained"}, _Envelope(msg_id)
    )
    return msg_id


@pytest.mark.parametrize(
    "emit,why",
    [
        (
            lambda tx: tx.emit("round.close", {"campaign_id": "c", "round_num": "one"}),
            "malformed round.close",
        ),
        (
            lambda tx: tx.emit("round.close", {"campaign_id": "c", "round_num": 1, "expectd": []}),
            "unknown fields",
        ),
        (
            lambda tx: tx.emit(
                "round.completed", {"campaign_id": "c", "round_num": 1, "model_version": 2}
            ),
            "may not send round.completed",
        ),
        (lambda tx: tx.emit("no.such.type", {}), "may not send no.such.type"),
        (
            lambda tx: tx.emit(
                CampaignCompleted("c", 1, "max_rounds", CampaignMetrics(rmse=float("nan")))
            ),
            "field final_metrics: field rmse must be a finite number",
        ),
        (lambda tx: tx.emit(RoundClose("c", 1, ["f1"], {"f2": 3})), "field failed"),
        (
            lambda tx: tx.emit(
                "campaign.completed",
                {
                    "campaign_id": "c",
                    "rounds": 1,
                    "reason": "x",
                    "final_metrics": {"rmse": 1.0, "rmse_typo": 2.0},
                },
            ),
            "CampaignMetrics payload has unknown fields ['rmse_typo']",
        ),
    ],
    ids=[
        "wrong-type",
        "misspelt-key",
        "not-its-role",
        "unknown-type",
        "bad-nested-number",
        "bad-typed-map",
        "misspelt-nested-key",
    ],
)
async def test_when_a_handler_emits_what_breaks_a_contract__its_transaction_fails_and_nothing_is_published(
    emit, why
):
    runner, store, endpoint = _runner(emit)
    with pytest.raises(RequeueMessage) as caught:
        await _deliver(runner)
    assert isinstance(caught.value.__cause__, EmitError) and why in str(caught.value.__cause__)
    assert store.read("seen") is None  # the handler's state change rolled back with it
    assert store.pending_outbox_heads() == [] and endpoint.published == []
    with store.transaction() as tx:
        assert tx.keys("") == []


async def test_when_a_handler_emits_a_typed_message__it_is_published_as_its_payload():
    runner, store, endpoint = _runner(lambda tx: tx.emit(RoundClose("c", 1, ["f1"]), round_num=1))
    msg_id = await _deliver(runner)
    assert store.read("seen") == "f1"
    assert endpoint.published == [("round.close", RoundClose("c", 1, ["f1"]).to_payload())]
    with store.transaction() as tx:
        assert tx.seen(msg_id)
