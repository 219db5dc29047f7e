"""Claim check: large updates sealed once into the claim store, redeemed and checked by reference."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from federation.bus.base import Delivery, RejectMessage
from federation.bus.memory import InMemoryBus
from federation.bus.middleware import SecureEndpoint
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.errors import MalformedMessage
from federation.monitoring.metrics import Metrics
from federation.roles import Role
from federation.runtime.claims import ClaimStore
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.claims import ClaimReference
from federation.wire.codec import encode_payload_parts
from federation.wire.contracts import CONTRACTS, Contract, may_refer
from federation.wire.envelope import TAG_LEN, decode_envelope
from federation.wire.messages import RoundOpen, UpdateRaw
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(30)

SENDER = "connector"
ROLES = {SENDER: "connector"}
N = 200_000  # 800 kB of float32: over the claim threshold


def _update(n: int = N, round_num: int = 1) -> UpdateRaw:
    return UpdateRaw(
        campaign_id="c1",
        round_num=round_num,
        datasite_id="site-a",
        model_version=0,
        delta={"w": torch.arange(n, dtype=torch.float32)},
        num_samples=10,
    )


class _Side:
    """A producer (store + claim store) and a consumer endpoint sharing one claim directory."""

    def __init__(self, tmp: Path, *, consumer_claims: bool = True) -> None:
        ring = KeyRing("k1", {"k1": os.urandom(32)})
        ident = SigningIdentity.generate(SENDER)
        trust = TrustStore({SENDER: ident.public_bytes()})
        self.out = Sealer(ring, sender=SENDER, identity=ident)
        self.inn = Sealer(ring, sender="security", trust=trust)
        self.claims = ClaimStore(tmp / "claims", SENDER, self.out, sync=False)
        self.store = SqliteStore(tmp / "connector.sqlite")
        self.store.claims = self.claims
        self.registry = CollectorRegistry()
        self.endpoint = SecureEndpoint(
            InMemoryBus(), self.inn, Metrics("security", self.registry), "security", roles=ROLES
        )
        if consumer_claims:
            self.endpoint.claims = ClaimStore(tmp / "claims", "security", self.inn, sync=False)

    def emit(self, message: object) -> dict:
        """Commit one message to the outbox; the payload its row holds."""
        with self.store.transaction() as tx:
            tx.emit(message.msg_type.value, message.to_payload(), round_num=message.round_num)
        (item,) = self.store.pending_outbox()
        self.store.outbox_done(item.id)
        return item.payload

    def deliver(self, payload: dict, msg_type: str = "update.raw", round_num: int = 1) -> bytes:
        (body,) = self.out.seal(msg_type, payload, round_num=round_num)
        return body

    async def handle(self, body: bytes, msg_type: str = "update.raw") -> list:
        got: list = []

        async def handler(kind, payload, envelope) -> None:
            got.append((payload, envelope))

        await self.endpoint._handle(Delivery(body, msg_type), handler)
        return got

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "pdmfed_messages_rejected_total", {"service": "security", "reason": reason}
        )
        return 0.0 if value is None else value

    def body_path(self, ref: ClaimReference) -> Path:
        return self.claims.root / ref.producer / ref.name


@pytest.fixture
def side(tmp_path: Path) -> _Side:
    s = _Side(tmp_path)
    yield s
    s.store.close()


def test_when_a_large_update_is_emitted__the_outbox_holds_a_reference_to_its_sealed_body(side):
    payload = side.emit(_update())
    ref = ClaimReference.from_payload(payload)
    assert ref is not None and ref.producer == SENDER
    stored = side.body_path(ref).read_bytes()
    assert len(stored) == ref.size > N * 4  # the whole update, sealed
    assert torch.arange(N, dtype=torch.float32).numpy().tobytes() not in stored  # encrypted


def test_when_a_transaction_emits_several_updates__the_outbox_keeps_their_order(side):
    with side.store.transaction() as tx:
        for rnd, n in ((1, N), (2, 10), (3, N), (4, 10)):
            tx.emit("update.raw", _update(n, round_num=rnd).to_payload(), round_num=rnd)
    items = side.store.pending_outbox()
    assert [i.round_num for i in items] == [1, 2, 3, 4]
    kinds = [ClaimReference.from_payload(i.payload) is not None for i in items]
    assert kinds == [True, False, True, False]


def test_when_an_update_is_small_or_its_type_may_not_refer__it_stays_inline(side):
    assert ClaimReference.from_payload(side.emit(_update(1000))) is None
    model = RoundOpen(
        campaign_id="c1", round_num=1, model_version=1,
        global_model={"w": torch.zeros(N)}, deadline_ts=time.time() + 60,
    )  # fmt: skip
    assert ClaimReference.from_payload(side.emit(model)) is None
    assert list((side.claims.root / SENDER).iterdir()) == []


def test_when_the_transaction_rolls_back__its_claim_body_is_removed(side):
    with pytest.raises(RuntimeError), side.store.transaction() as tx:
        tx.emit("update.raw", _update().to_payload(), round_num=1)
        tx.emit("update.raw", _update().to_payload(), round_num=1)
        raise RuntimeError("handler failed")
    side.store.settle()
    side.claims._own.settle()
    assert list((side.claims.root / SENDER).iterdir()) == []


async def test_when_a_reference_is_redeemed__the_handler_gets_the_update_and_its_bodys_envelope(
    side,
):
    payload = side.emit(_update())
    first = await side.handle(side.deliver(payload))
    again = await side.handle(side.deliver(payload))  # the outbox row published twice
    (msg, envelope), (_, envelope2) = first[0], again[0]
    assert isinstance(msg, UpdateRaw)
    assert torch.equal(msg.delta["w"], torch.arange(N, dtype=torch.float32))
    assert envelope.msg_id == envelope2.msg_id  # one handled id however often it is published
    assert envelope.chunk is None and envelope.sender == SENDER


async def test_when_the_claim_body_is_tampered_with__the_message_is_rejected_as_integrity(side):
    ref = ClaimReference.from_payload(side.emit(_update()))
    path = side.body_path(ref)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RejectMessage) as exc:
        await side.handle(side.deliver(ref.to_payload()))
    assert exc.value.reason == "integrity"
    assert side.rejected("integrity") == 1


async def test_when_the_claim_body_is_missing__the_message_is_rejected_with_its_own_reason(side):
    ref = ClaimReference.from_payload(side.emit(_update()))
    side.body_path(ref).unlink()
    with pytest.raises(RejectMessage) as exc:
        await side.handle(side.deliver(ref.to_payload()))
    assert exc.value.reason == "claim_missing"
    assert side.rejected("claim_missing") == 1


async def test_when_the_reference_digest_differs__the_body_is_refused_before_it_is_opened(side):
    ref = ClaimReference.from_payload(side.emit(_update()))
    wrong = ClaimReference(ref.ref, "0" * 64, ref.size)
    with pytest.raises(RejectMessage) as exc:
        await side.handle(side.deliver(wrong.to_payload()))
    assert exc.value.reason == "integrity"
    short = ClaimReference(ref.ref, ref.sha256, ref.size - 1)
    with pytest.raises(RejectMessage):
        await side.handle(side.deliver(short.to_payload()))
    assert side.rejected("integrity") == 2


async def test_when_a_reference_names_its_body_by_the_sha256_of_all_its_bytes__it_still_redeems(
    side,
):
    """References an older build wrote (whole-body SHA-256) may sit in an outbox across an
    upgrade: the body is as well bound, and the update is not lost."""
    ref = ClaimReference.from_payload(side.emit(_update()))
    whole = hashlib.sha256(side.body_path(ref).read_bytes()).hexdigest()
    ((msg, _),) = await side.handle(
        side.deliver(ClaimReference(ref.ref, whole, ref.size).to_payload())
    )
    assert torch.equal(msg.delta["w"], torch.arange(N, dtype=torch.float32))


async def test_when_a_key_holder_reencrypts_other_bytes_under_the_bodys_header__it_is_refused(
    side,
):
    """The reference binds the body's header, tag and signature, not a hash of its ciphertext:
    whoever holds the encryption key and rewrites the ciphertext (with a valid tag) under the
    same header changes the tag, so the digest no longer matches."""
    ref = ClaimReference.from_payload(side.emit(_update()))
    path = side.body_path(ref)
    body = path.read_bytes()
    env = decode_envelope(body)
    other = UpdateRaw(**{**_update().__dict__, "delta": {"w": torch.zeros(N)}}).to_payload()
    plain = encode_payload_parts(other).tobytes()
    assert len(plain) == len(env.encrypted_data) - TAG_LEN
    aad = env.aad()
    ct = AESGCM(side.out.keyring.sealing_key()).encrypt(env.nonce, plain, aad)
    path.write_bytes(aad + ct + body[len(aad) + len(ct) :])  # header, new ciphertext, signature
    with pytest.raises(RejectMessage) as exc:
        await side.handle(side.deliver(ref.to_payload()))
    assert exc.value.reason == "integrity"


async def test_when_a_body_is_swapped_for_the_senders_other_body_of_the_round__it_is_refused(side):
    first = ClaimReference.from_payload(side.emit(_update()))
    second = ClaimReference.from_payload(side.emit(_update()))
    assert first.size == second.size
    side.body_path(second).replace(side.body_path(first))  # same sender, type, site, round
    with pytest.raises(RejectMessage) as exc:
        await side.handle(side.deliver(first.to_payload()))
    assert exc.value.reason == "integrity"


async def test_when_a_reference_names_a_body_of_another_round__it_is_refused(side):
    ref = ClaimReference.from_payload(side.emit(_update(round_num=1)))
    with pytest.raises(RejectMessage) as exc:  # replaying round 1's body into round 2
        await side.handle(side.deliver(ref.to_payload(), round_num=2))
    assert exc.value.reason == "integrity"


async def test_when_the_consumer_has_no_claim_store__a_reference_is_refused_not_crashed(tmp_path):
    side = _Side(tmp_path, consumer_claims=False)
    try:
        ref = ClaimReference.from_payload(side.emit(_update()))
        with pytest.raises(RejectMessage) as exc:
            await side.handle(side.deliver(ref.to_payload()))
        assert exc.value.reason == "claim_missing"
    finally:
        side.store.close()


async def test_when_a_type_may_not_refer__its_reference_is_malformed(side):
    ref = ClaimReference.from_payload(side.emit(_update()))
    with pytest.raises(RejectMessage) as exc:
        await side.handle(side.deliver(ref.to_payload(), msg_type="stats.raw"), "stats.raw")
    assert exc.value.reason == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        {"claim_check": {"ref": "../etc/passwd", "sha256": "0" * 64, "size": 1}},
        {"claim_check": {"ref": "connector/" + "0" * 32, "sha256": "zz", "size": 1}},
        {"claim_check": {"ref": "connector/" + "0" * 32, "sha256": "0" * 64, "size": 0}},
        {"claim_check": {"ref": "connector/" + "0" * 32, "sha256": "0" * 64}},
        {"claim_check": {"ref": "connector/" + "0" * 32, "sha256": "0" * 64, "size": 1}, "x": 1},
    ],
)
def test_when_a_reference_is_malformed__it_is_refused_as_malformed(payload):
    with pytest.raises(MalformedMessage):
        ClaimReference.from_payload(payload)


def test_when_claims_are_collected__only_idle_unreferenced_bodies_go(side):
    pending = ClaimReference.from_payload(side.emit(_update()))
    with side.store.transaction() as tx:  # a second one still in the outbox
        tx.emit("update.raw", _update().to_payload(), round_num=1)
    (item,) = side.store.pending_outbox()
    queued = ClaimReference.from_payload(item.payload)
    assert side.store.collect_claims() == 0  # young: kept
    old = time.time() - 2 * side.store.inbox_retention_s
    for ref in (pending, queued):
        os.utime(side.body_path(ref), (old, old))
    assert side.store.collect_claims() == 1
    side.claims._own.settle()
    assert not side.body_path(pending).exists()
    assert side.body_path(queued).exists()  # its message is not published yet


def test_when_contracts_declare_references__only_updates_and_models_may_refer():
    assert {t.value for t, c in CONTRACTS.items() if c.by_reference} == {
        "update.raw",
        "update.screened",
        "round.open",
        "round.completed",
    }
    assert may_refer("update.raw") and may_refer("round.open")
    assert not may_refer("stats.raw") and not may_refer("nope")
    with pytest.raises(ValueError):  # a factory seals no envelope and mounts no claim store
        Contract(RoundOpen, frozenset({Role.TRAINER_DISPATCH}), ((Role.FACTORY, "x"),),
                 by_reference=True)  # fmt: skip


async def test_when_a_runner_relays_screened_references__one_flush_sends_all_and_metrics_see_originals(
    tmp_path,
):
    from federation.runtime.service import Service, ServiceRunner
    from federation.wire.messages import UpdateScreened, Verdict

    registry = CollectorRegistry()
    side = _Side(tmp_path)
    sent: list[str] = []

    class _Bus:
        async def publish(self, routing_key: str, body: bytes, *, headers=None) -> None:
            sent.append(routing_key)

    producer = SecureEndpoint(_Bus(), side.out, None, "security")  # type: ignore[arg-type]
    runner = ServiceRunner(
        Service(name="security", queue="unused"),
        producer,
        side.store,
        Metrics("security", registry),
    )
    screened = [
        UpdateScreened(campaign_id="c1", round_num=1, datasite_id=f"site-{i}",
                       delta={"w": torch.zeros(N)}, verdict=Verdict(reputation=0.5 + i / 10))
        for i in range(3)
    ]  # fmt: skip
    try:
        runner_commit = side.store.transaction()
        with runner_commit as tx:
            for msg in screened:
                tx.emit(msg.msg_type.value, msg.to_payload(), datasite_id=msg.datasite_id)
        for kind, original in tx.referenced:  # what the runner observes after its commit
            runner._observe_emitted(kind, original)
        assert await runner.flush_outbox() == 3  # none stalls the flush
        assert sent == ["update.screened"] * 3
        for i in range(3):
            assert registry.get_sample_value(
                "pdmfed_client_reputation", {"campaign": "c1", "datasite_id": f"site-{i}"}
            ) == pytest.approx(0.5 + i / 10)
    finally:
        side.store.close()
