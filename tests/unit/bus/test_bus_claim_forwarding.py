"""Claim forwarding: security passes a connector's update on by reference to its sealed body."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from federation.bus.base import Delivery, RejectMessage
from federation.bus.memory import InMemoryBus
from federation.bus.middleware import SecureEndpoint
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.monitoring.metrics import Metrics
from federation.runtime.claims import ClaimStore
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.claims import ClaimReference, forwarded_fields
from federation.wire.messages import UpdateRaw, UpdateScreened, Verdict
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(30)

N = 200_000  # 800 kB of float32: over the claim threshold
ROLES = {"connector": "connector", "security": "security"}


def _raw(round_num: int = 1, datasite_id: str = "site-a", value: float = 1.0) -> UpdateRaw:
    return UpdateRaw(
        campaign_id="c1",
        round_num=round_num,
        datasite_id=datasite_id,
        model_version=3,
        delta={"w": torch.full((N,), value)},
        num_samples=42,
    )


def _screened(raw: UpdateRaw, **change) -> UpdateScreened:
    fields = {
        "campaign_id": raw.campaign_id,
        "round_num": raw.round_num,
        "datasite_id": raw.datasite_id,
        "model_version": raw.model_version,
        "delta": raw.delta,
        "num_samples": raw.num_samples,
        "weight": 0.25,
        "verdict": Verdict(accepted=True, reputation=0.9),
        "expected": ["site-a", "site-b"],
    }
    return UpdateScreened(**{**fields, **change})


class _Federation:
    """A connector and a security (each a store with its claim folder) and the aggregator's
    endpoint, sharing one claim directory and one encryption key."""

    def __init__(self, tmp: Path) -> None:
        ring = KeyRing("k1", {"k1": os.urandom(32)})
        ids = {name: SigningIdentity.generate(name) for name in ROLES}
        trust = TrustStore({name: ident.public_bytes() for name, ident in ids.items()})
        self.sealers = {name: Sealer(ring, sender=name, identity=ids[name]) for name in ROLES}
        self.root = tmp / "claims"
        self.stores = {}
        for name in ROLES:
            store = SqliteStore(tmp / f"{name}.sqlite")
            store.claims = ClaimStore(self.root, name, self.sealers[name], sync=False)
            self.stores[name] = store
        self.registry = CollectorRegistry()
        self.aggregator = SecureEndpoint(
            InMemoryBus(),
            Sealer(ring, sender="aggregator", trust=trust),
            Metrics("aggregator", self.registry),
            "aggregator",
            roles=ROLES,
        )
        self.aggregator.claims = ClaimStore(self.root, "aggregator", self.sealers["security"])

    def emit(self, service: str, message, **where) -> dict:
        """Commit one message to ``service``'s outbox; the payload its row holds."""
        store = self.stores[service]
        with store.transaction() as tx:
            tx.emit(message.msg_type.value, message.to_payload(), round_num=message.round_num,
                    datasite_id=message.datasite_id, **where)  # fmt: skip
        (item,) = store.pending_outbox()
        store.outbox_done(item.id)
        return item.payload

    def deliver(self, payload: dict, sender: str = "security", round_num: int = 1,
                datasite_id: str = "site-a", msg_type: str = "update.screened") -> bytes:  # fmt: skip
        (body,) = self.sealers[sender].seal(
            msg_type, payload, round_num=round_num, datasite_id=datasite_id
        )
        return body

    async def handle(self, body: bytes, msg_type: str = "update.screened") -> list:
        got: list = []

        async def handler(kind, payload, envelope) -> None:
            got.append((payload, envelope))

        await self.aggregator._handle(Delivery(body, msg_type), handler)
        return got

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "pdmfed_messages_rejected_total", {"service": "aggregator", "reason": reason}
        )
        return 0.0 if value is None else value

    def path(self, ref: ClaimReference) -> Path:
        return self.root / ref.producer / ref.name

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


@pytest.fixture
def fed(tmp_path: Path) -> _Federation:
    f = _Federation(tmp_path)
    yield f
    f.close()


def _forward(fed: _Federation, raw: UpdateRaw, **change) -> tuple[ClaimReference, dict]:
    """The connector's reference to ``raw`` and security's forwarding row for it."""
    received = ClaimReference.from_payload(fed.emit("connector", raw))
    row = fed.emit("security", _screened(raw, **change), forward=received)
    return received, row


async def test_when_security_forwards_an_update__it_writes_no_bytes_and_the_aggregator_gets_it(
    fed,
):
    raw = _raw()
    received, row = _forward(fed, raw)
    kept = ClaimReference.from_payload(row)
    assert forwarded_fields(row) == {
        "weight": 0.25,
        "verdict": Verdict(accepted=True, reputation=0.9).to_payload(),
        "expected": ["site-a", "site-b"],
    }
    assert kept.producer == "security" and (kept.sha256, kept.size) == (
        received.sha256,
        received.size,
    )
    assert fed.path(kept).stat().st_ino == fed.path(received).stat().st_ino  # a link, no copy
    first = await fed.handle(fed.deliver(row))
    again = await fed.handle(fed.deliver(row))  # the outbox row published twice
    (msg, envelope), (_, envelope2) = first[0], again[0]
    assert isinstance(msg, UpdateScreened)
    assert torch.equal(msg.delta["w"], raw.delta["w"])
    assert (msg.num_samples, msg.model_version, msg.weight) == (42, 3, 0.25)
    assert msg.verdict.reputation == 0.9 and msg.expected == ["site-a", "site-b"]
    assert envelope.sender == "security" and envelope.msg_type == "update.screened"
    assert envelope.msg_id == envelope2.msg_id  # handled once however often it is published


async def test_when_the_connectors_body_is_collected__the_forwarded_link_still_serves(fed):
    received, row = _forward(fed, _raw())
    fed.path(received).unlink()  # the connector's retention ended
    (msg, _), = await fed.handle(fed.deliver(row))  # fmt: skip
    assert msg.num_samples == 42


def test_when_the_received_body_is_gone__security_seals_the_update_itself(fed):
    raw = _raw()
    received = ClaimReference.from_payload(fed.emit("connector", raw))
    fed.path(received).unlink()
    row = fed.emit("security", _screened(raw), forward=received)
    ref = ClaimReference.from_payload(row)
    assert forwarded_fields(row) is None and ref.producer == "security"
    assert fed.path(ref).stat().st_size > N * 4  # sealed and written by security


def test_when_the_received_body_changed_before_forwarding__security_seals_it_itself(fed):
    raw = _raw()
    received = ClaimReference.from_payload(fed.emit("connector", raw))
    other = ClaimReference.from_payload(fed.emit("connector", _raw(value=9.0)))
    fed.path(other).replace(fed.path(received))  # swapped on the shared volume
    row = fed.emit("security", _screened(raw), forward=received)
    assert forwarded_fields(row) is None
    fed.stores["security"].claims._own.settle()  # files are unlinked on a background thread
    assert len(list((fed.root / "security").iterdir())) == 1  # the refused link is gone


@pytest.mark.parametrize(
    "own",
    [{"num_samples": 10**9}, {"delta": {}}, {"datasite_id": "site-b"}, {"factory_key_id": "x"}],
)
async def test_when_a_forwarder_overrides_what_the_body_carries__it_is_refused_as_malformed(
    fed, own
):
    received, row = _forward(fed, _raw())
    forged = ClaimReference.from_payload(row).to_payload({**forwarded_fields(row), **own})
    with pytest.raises(RejectMessage) as exc:
        await fed.handle(fed.deliver(forged))
    assert exc.value.reason == "malformed"
    assert fed.rejected("malformed") >= 1  # counted, like every refusal


async def test_when_a_type_that_forwards_nothing_carries_forwarded_fields__it_is_malformed(fed):
    received = ClaimReference.from_payload(fed.emit("connector", _raw()))
    fed.aggregator.claims = ClaimStore(fed.root, "security", fed.sealers["security"])
    body = fed.deliver(received.to_payload({"weight": 1.0}), sender="connector",
                       msg_type="update.raw")  # fmt: skip
    with pytest.raises(RejectMessage) as exc:
        await fed.handle(body, "update.raw")
    assert exc.value.reason == "malformed"
    assert fed.rejected("malformed") >= 1  # counted, like every refusal


async def test_when_the_forwarded_body_is_of_another_round_or_datasite__it_is_refused(fed):
    _, row = _forward(fed, _raw(round_num=1))
    with pytest.raises(RejectMessage) as exc:  # round 1's update replayed into round 2
        await fed.handle(fed.deliver(row, round_num=2))
    assert exc.value.reason == "integrity"
    assert fed.rejected("integrity") >= 1  # counted, like every refusal
    with pytest.raises(RejectMessage) as exc:  # site-a's update credited to site-b
        await fed.handle(fed.deliver(row, datasite_id="site-b"))
    assert exc.value.reason == "integrity"
    assert fed.rejected("integrity") >= 1  # counted, like every refusal


async def test_when_the_forwarded_body_is_not_an_update_raw__it_is_refused(fed):
    """Security's own screened body forwarded as if it were the connector's update."""
    raw = _raw()
    own = ClaimReference.from_payload(fed.emit("security", _screened(raw)))
    forged = own.to_payload({"weight": 5.0})
    with pytest.raises(RejectMessage) as exc:
        await fed.handle(fed.deliver(forged))
    assert exc.value.reason == "integrity"
    assert fed.rejected("integrity") >= 1  # counted, like every refusal


async def test_when_the_forwarded_body_is_sealed_by_a_role_that_may_not_send_it__forbidden(fed):
    """A compromised security forges the 'connector's update' itself: its role may not send
    update.raw, so the aggregator refuses the body even though security's key sealed it."""
    raw = _raw()
    with fed.stores["security"].transaction() as tx:  # the raw store API: no contract check
        tx.emit("update.raw", raw.to_payload(), round_num=1, datasite_id="site-a")
    (item,) = fed.stores["security"].pending_outbox()
    forged_body = ClaimReference.from_payload(item.payload)
    forged = forged_body.to_payload({"weight": 1.0})
    with pytest.raises(RejectMessage) as exc:
        await fed.handle(fed.deliver(forged))
    assert exc.value.reason == "forbidden"
    assert fed.rejected("forbidden") >= 1  # counted, like every refusal


@pytest.mark.parametrize("privacy", ["none", "central", "local"])
def test_security_forwards_an_accepted_update_only_when_its_delta_leaves_unchanged(fed, privacy):
    """Local DP clips and noises the delta at security: that update is sealed anew, never
    forwarded (the aggregator would otherwise aggregate the un-noised body)."""
    from types import SimpleNamespace

    from federation.campaign import CampaignConfig
    from federation.runtime.service import CheckedTransaction
    from federation.wire.messages import parse_payload

    from services.security.handlers import build_service

    dp = {"none": {"enabled": False}, "central": {"enabled": True, "mode": "central"},
          "local": {"enabled": True, "mode": "local", "clip_norm": 1.0}}[privacy]  # fmt: skip
    cfg = CampaignConfig.model_validate(
        {"campaign_id": "c1", "privacy": dp, "robustness": {"enabled": False}}
    )
    service, store = build_service(), fed.stores["security"]

    def handle(kind: str, payload: dict, envelope=None) -> None:
        with store.transaction() as tx:
            _, handler = service.handler_of(kind)
            handler(CheckedTransaction(tx, "security"), parse_payload(kind, payload), envelope)

    handle("campaign.start", {"campaign_id": "c1", "config": cfg.to_payload()})
    raw = _raw()
    received = ClaimReference.from_payload(fed.emit("connector", raw))
    handle(
        "update.raw",
        raw.to_payload(),
        SimpleNamespace(claim=received, msg_type="update.raw", datasite_id="site-a", round_num=1),
    )
    handle("round.close", {"campaign_id": "c1", "round_num": 1, "expected": ["site-a"]})
    (row,) = [i.payload for i in store.pending_outbox(10) if i.msg_type == "update.screened"]
    forwarded = forwarded_fields(row) is not None
    assert forwarded == (privacy != "local")
    kept = ClaimReference.from_payload(row)
    same_inode = fed.path(kept).stat().st_ino == fed.path(received).stat().st_ino
    assert same_inode == forwarded


async def test_the_connector_seals_an_update_before_its_transaction_and_queues_only_the_reference(
    fed,
):
    """Sealing (AES, checksum, fsync) runs in the prepare step, in parallel across datasites
    and outside the store's write lock; an attempt already answered leaves no body behind."""
    from federation.datasite_registry import DatasiteRegistry
    from federation.runtime.service import CheckedTransaction
    from federation.wire.messages import TrainRequest

    from services.connector.handlers import ConnectorLogic, build_service

    logic = ConnectorLogic(comm_manager=None, registry=DatasiteRegistry({}))
    store = fed.stores["connector"]
    logic.store = store
    raw = _raw()

    async def trained(job, ds, request, what):
        return {"ok": True, "result": {"delta": raw.delta, "num_samples": 42, "loss": 0.5}}

    logic._at_datasite = trained
    msg = TrainRequest(campaign_id="c1", round_num=1, datasite_id="site-a", model_version=3)
    service = build_service(logic)
    _, handler = service.handler_of("train.request")

    async def answer() -> ClaimReference:
        prepared = await service.prepare[TrainRequest](msg, None)
        assert fed.path(prepared["sealed"]).exists()  # sealed before the transaction
        with store.transaction() as tx:
            handler(CheckedTransaction(tx, "connector"), msg, None, prepared=prepared)
        return prepared["sealed"]

    first = await answer()
    again = await answer()  # a redelivered request whose answer is already committed
    (row,) = [i.payload for i in store.pending_outbox(10) if i.msg_type == "update.raw"]
    assert row == first.to_payload()
    store.claims._own.settle()  # files are unlinked on a background thread
    assert not fed.path(again).exists()  # sealed for nothing: removed
    ((update, envelope),) = await fed.handle(
        fed.deliver(row, sender="connector", msg_type="update.raw"), "update.raw"
    )
    assert torch.equal(update.delta["w"], raw.delta["w"]) and update.num_samples == 42
    assert envelope.sender == "connector"
