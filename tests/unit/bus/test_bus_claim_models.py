"""Models by claim check (PDMFED_CLAIM_MODELS): round.open / round.completed sealed once into
the claim store, redeemed by the services and by an orchestrator that mounts the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from federation.bus.base import Delivery
from federation.bus.memory import InMemoryBus
from federation.bus.middleware import SecureEndpoint
from federation.config import Settings
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.errors import ConfigError
from federation.monitoring.metrics import Metrics
from federation.orchestrator.client import CampaignClient
from federation.runtime.claims import ClaimStore
from federation.runtime.launch import orchestrator_endpoint
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.claims import ClaimReference
from federation.wire.contracts import reaches_orchestrator
from federation.wire.envelope import TAG_LEN
from federation.wire.messages import RoundCompleted, RoundOpen
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(30)

N = 200_000  # 800 kB of float32: over the claim threshold
ROLES = {
    "aggregator": "aggregator",
    "trainer-dispatch": "trainer-dispatch",
    "connector": "connector",
}


def _completed(round_num: int = 1, fill: float = 1.0) -> RoundCompleted:
    return RoundCompleted(
        campaign_id="c1",
        round_num=round_num,
        model_version=round_num,
        participants=["site-a"],
        global_model={"w": torch.full((N,), fill)},
    )


class _Plane:
    """The aggregator (store + claim store with models by reference) and an orchestrator
    client, sharing one claim directory and one key ring."""

    def __init__(self, tmp: Path, *, models: bool = True, orchestrator_claims: bool = True):
        self.ring = KeyRing("k1", {"k1": os.urandom(32)})
        self.idents = {s: SigningIdentity.generate(s) for s in ROLES}
        trust = TrustStore({s: i.public_bytes() for s, i in self.idents.items()})
        self.sealers = {s: Sealer(self.ring, sender=s, identity=i) for s, i in self.idents.items()}
        self.root = tmp / "claims"
        self.claims = ClaimStore(
            self.root, "aggregator", self.sealers["aggregator"], sync=False, models=models
        )
        self.store = SqliteStore(tmp / "aggregator.sqlite")
        self.store.claims = self.claims
        self.registry = CollectorRegistry()
        inn = Sealer(self.ring, sender="orchestrator", trust=trust)
        settings = Settings(claim_dir=self.root if orchestrator_claims else None)
        endpoint = orchestrator_endpoint(
            settings, InMemoryBus(), inn, Metrics("orchestrator", self.registry), ROLES
        )
        self.client = CampaignClient(None, endpoint)

    def emit(self, message: RoundCompleted | RoundOpen) -> dict:
        with self.store.transaction() as tx:
            tx.emit(message.msg_type.value, message.to_payload(), round_num=message.round_num)
        (item,) = self.store.pending_outbox()
        self.store.outbox_done(item.id)
        return item.payload

    def deliver(self, payload: dict, sender: str = "aggregator",
                msg_type: str = "round.completed", round_num: int = 1) -> Delivery:  # fmt: skip
        (body,) = self.sealers[sender].seal(msg_type, payload, round_num=round_num)
        return Delivery(body, msg_type)

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "pdmfed_messages_rejected_total", {"service": "orchestrator", "reason": reason}
        )
        return 0.0 if value is None else value

    def path(self, ref: ClaimReference) -> Path:
        return self.root / ref.producer / ref.name


@pytest.fixture
def plane(tmp_path: Path) -> _Plane:
    p = _Plane(tmp_path)
    yield p
    p.store.close()


def test_models_go_by_reference_only_where_the_orchestrator_mounts_the_store(tmp_path):
    assert reaches_orchestrator("round.completed") and reaches_orchestrator("round.open")
    assert not reaches_orchestrator("update.raw")
    off = _Plane(tmp_path / "off", models=False)
    on = _Plane(tmp_path / "on", models=True)
    try:
        assert ClaimReference.from_payload(off.emit(_completed())) is None  # in line
        ref = ClaimReference.from_payload(on.emit(_completed()))
        assert ref is not None and on.path(ref).stat().st_size > N * 4
    finally:
        off.store.close()
        on.store.close()


async def test_an_orchestrator_with_the_store_redeems_the_model_and_records_it(plane):
    ref = ClaimReference.from_payload(plane.emit(_completed(fill=2.5)))
    await plane.client._on_delivery(plane.deliver(ref.to_payload()))
    record = plane.client.records["c1"]
    assert [r["round_num"] for r in record.rounds] == [1]
    assert record.rounds[0]["participants"] == ["site-a"]
    assert torch.equal(record.final_model["w"], torch.full((N,), 2.5))
    assert plane.client.cannot_follow is None


async def test_a_model_body_altered_on_disk_is_refused_and_never_becomes_the_final_model(plane):
    ref = ClaimReference.from_payload(plane.emit(_completed()))
    body = bytearray(plane.path(ref).read_bytes())
    body[len(body) // 2] ^= 0x01  # one ciphertext bit: the AEAD tag fails
    plane.path(ref).write_bytes(bytes(body))
    await plane.client._on_delivery(plane.deliver(ref.to_payload()))
    assert plane.rejected("integrity") == 1
    assert "c1" not in plane.client.records


async def test_a_reference_naming_another_senders_body_is_refused(plane):
    # A compromised connector seals its own "round.completed" body into the store and
    # publishes a reference to it under the aggregator's name: the body's sender must be the
    # reference's sender, and the connector may not send round.completed.
    connector = ClaimStore(plane.root, "connector", plane.sealers["connector"], sync=False,
                           models=True)  # fmt: skip
    from federation.wire.codec import encode_payload_parts

    forged = connector.deposit(
        "round.completed", encode_payload_parts(_completed(fill=9.0).to_payload()), round_num=1
    )
    await plane.client._on_delivery(plane.deliver(forged.to_payload()))
    assert plane.rejected("integrity") == 1
    await plane.client._on_delivery(plane.deliver(forged.to_payload(), sender="connector"))
    assert plane.rejected("forbidden") == 1
    assert "c1" not in plane.client.records


async def test_a_reference_whose_digest_names_another_body_is_refused(plane):
    first = ClaimReference.from_payload(plane.emit(_completed(round_num=1, fill=1.0)))
    second = ClaimReference.from_payload(plane.emit(_completed(round_num=1, fill=7.0)))
    swapped = ClaimReference(first.ref, second.sha256, first.size)
    await plane.client._on_delivery(plane.deliver(swapped.to_payload()))
    assert plane.rejected("integrity") == 1
    assert "c1" not in plane.client.records
    assert first.size > N * 4 + TAG_LEN


async def test_an_orchestrator_without_the_store_stops_waiting_with_the_reason(tmp_path):
    plane = _Plane(tmp_path, orchestrator_claims=False)
    try:
        ref = ClaimReference.from_payload(plane.emit(_completed()))
        plane.client._record("c1")
        await plane.client._on_delivery(plane.deliver(ref.to_payload()))
        assert plane.rejected("claim_missing") == 1
        with pytest.raises(ConfigError, match="PDMFED_CLAIM_DIR"):
            await plane.client.wait("c1", timeout=1.0)
    finally:
        plane.store.close()


async def test_a_service_redeems_round_open_by_reference(tmp_path):
    # The connector receives the round's model from round.open sent by reference by dispatch.
    plane = _Plane(tmp_path)
    dstore, ref = _round_open_by_reference(plane, tmp_path, 3.0)
    store, endpoint, _, _ = _connector(plane, tmp_path)
    try:
        assert ref is not None and ref.producer == "trainer-dispatch"
        got: list = []

        async def handler(kind, payload, envelope) -> None:
            got.append(payload)

        delivery = plane.deliver(ref.to_payload(), sender="trainer-dispatch",
                                 msg_type="round.open")  # fmt: skip
        await endpoint._handle(delivery, handler)
        (payload,) = got
        assert torch.equal(payload.global_model["w"], torch.full((N,), 3.0))
    finally:
        store.close()
        dstore.close()
        plane.store.close()


def _round_open_by_reference(plane: _Plane, tmp: Path, fill: float):
    """Dispatch (its store and claim folder, models by reference) emits round 1's round.open
    with a model of ``fill``: its store and the reference the outbox row holds."""
    dispatch = ClaimStore(plane.root, "trainer-dispatch", plane.sealers["trainer-dispatch"],
                          sync=False, models=True)  # fmt: skip
    store = SqliteStore(tmp / "dispatch.sqlite")
    store.claims = dispatch
    model = RoundOpen(campaign_id="c1", round_num=1, model_version=1,
                      global_model={"w": torch.full((N,), fill)}, deadline_ts=2e9)  # fmt: skip
    with store.transaction() as tx:
        tx.emit("round.open", model.to_payload(), round_num=1)
    (item,) = store.pending_outbox()
    return store, ClaimReference.from_payload(item.payload)


def _connector(plane: _Plane, tmp: Path, name: str = "connector.sqlite"):
    """A connector replica: its store (with its claim folder), endpoint and logic."""
    from federation.datasite_registry import DatasiteRegistry

    from services.connector.handlers import ConnectorLogic, build_service

    trust = TrustStore({"trainer-dispatch": plane.idents["trainer-dispatch"].public_bytes()})
    inn = Sealer(plane.ring, sender="connector", trust=trust)
    store = SqliteStore(tmp / name)
    store.claims = ClaimStore(plane.root, "connector", inn, sync=False)
    endpoint = SecureEndpoint(InMemoryBus(), inn, None, "connector", roles=ROLES)
    endpoint.claims = store.claims
    logic = ConnectorLogic(comm_manager=None, registry=DatasiteRegistry({}))
    logic.store = store
    return store, endpoint, logic, build_service(logic)


async def test_the_connector_keeps_round_opens_body_as_its_model_and_checks_it_when_reread(
    tmp_path,
):
    from federation.errors import IntegrityError
    from federation.runtime.service import CheckedTransaction
    from federation.runtime.store import PIN_PREFIX

    from services.connector.handlers import model_key

    plane = _Plane(tmp_path)
    dstore, ref = _round_open_by_reference(plane, tmp_path, 4.0)
    store, endpoint, logic, service = _connector(plane, tmp_path)
    _, handler = service.handler_of("round.open")

    async def on(kind, payload, envelope) -> None:
        with store.transaction() as tx:
            handler(CheckedTransaction(tx, "connector"), payload, envelope)

    delivery = plane.deliver(ref.to_payload(), sender="trainer-dispatch", msg_type="round.open")
    await endpoint._handle(delivery, on)
    key = model_key("c1", 1)
    with store.transaction() as tx:  # the row pins the body: no tensors were written again
        (blob,) = tx._x("SELECT blob FROM kv WHERE key = ?", (key,)).fetchone()
    assert blob.startswith(PIN_PREFIX)
    (link,) = (plane.root / "connector").iterdir()
    assert link.stat().st_ino == (plane.root / ref.producer / ref.name).stat().st_ino
    request = {"campaign_id": "c1", "model_version": 1}
    assert torch.equal(logic.global_model(request)["w"], torch.full((N,), 4.0))
    # Another replica (nothing in memory) reads the body again with every check...
    store.close()
    other, _, logic2, _ = _connector(plane, tmp_path)
    assert torch.equal(logic2.global_model(request)["w"], torch.full((N,), 4.0))
    other.close()
    # ...and refuses it once it was altered: no forged model reaches a datasite.
    body = bytearray(link.read_bytes())
    body[len(body) // 2] ^= 0x01
    link.write_bytes(bytes(body))
    third, _, logic3, _ = _connector(plane, tmp_path)
    with pytest.raises(IntegrityError):
        logic3.global_model(request)
    third.close()
    dstore.close()
    plane.store.close()


async def test_dispatch_keeps_round_completeds_body_as_the_campaigns_model(plane, tmp_path):
    from services.trainer_dispatch import state

    ref = ClaimReference.from_payload(plane.emit(_completed(fill=6.0)))
    trust = TrustStore({"aggregator": plane.idents["aggregator"].public_bytes()})
    inn = Sealer(plane.ring, sender="trainer-dispatch", trust=trust)
    store = SqliteStore(tmp_path / "dispatch.sqlite")
    store.claims = ClaimStore(plane.root, "trainer-dispatch", inn, sync=False)
    endpoint = SecureEndpoint(InMemoryBus(), inn, None, "trainer-dispatch", roles=ROLES)
    endpoint.claims = store.claims
    got: list = []

    async def on(kind, payload, envelope) -> None:
        got.append((payload, envelope))

    await endpoint._handle(plane.deliver(ref.to_payload()), on)
    ((msg, envelope),) = got
    with store.transaction() as tx:
        state.put_model(tx, "c1", {"version": 1, "state_dict": msg.global_model}, envelope)
    assert [p.stat().st_ino for p in (plane.root / "trainer-dispatch").iterdir()] == [
        plane.path(ref).stat().st_ino
    ]
    store.claims.forget([p.name for p in (plane.root / "trainer-dispatch").iterdir()])
    with store.transaction() as tx:  # not in memory: read again and checked
        record = state.get_model(tx, "c1")
    assert record["version"] == 1 and torch.equal(record["state_dict"]["w"], torch.full((N,), 6.0))
    store.close()
