"""Kept bodies: security and the aggregator keep the body an update arrived in as its stored
delta (a hard link and a pin), never encoding, writing and reading it back a second time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from federation.bus.base import Delivery
from federation.bus.memory import InMemoryBus
from federation.bus.middleware import SecureEndpoint
from federation.campaign import CampaignConfig
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.errors import ClaimError, IntegrityError
from federation.monitoring.metrics import Metrics
from federation.runtime.claims import ClaimStore
from federation.runtime.service import CheckedTransaction
from federation.runtime.store import PIN_PREFIX
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.claims import ClaimReference
from federation.wire.messages import RoundClose, RoundOpen, UpdateRaw, parse_payload
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(60)

N = 200_000  # 800 kB of float32: over the claim threshold
ROLES = {
    "connector": "connector",
    "security": "security",
    "aggregator": "aggregator",
    "trainer-dispatch": "trainer-dispatch",
}
SITES = ("site-a", "site-b")


def _raw(datasite_id: str, value: float) -> UpdateRaw:
    return UpdateRaw(
        campaign_id="c1",
        round_num=1,
        datasite_id=datasite_id,
        model_version=0,
        delta={"w": torch.full((N,), value)},
        num_samples=10,
    )


class _Round:
    """A connector, security and aggregator, each with its store, claim folder and endpoint,
    sharing one claim directory and key; messages pass between them through the endpoints'
    real opening (reference redeemed, body checked), handled by the real service handlers."""

    def __init__(self, tmp: Path) -> None:
        from services.aggregator.handlers import build_service as aggregator
        from services.security.handlers import build_service as security

        ring = KeyRing("k1", {"k1": os.urandom(32)})
        ids = {name: SigningIdentity.generate(name) for name in ROLES}
        self.trust = TrustStore({name: ident.public_bytes() for name, ident in ids.items()})
        self.root = tmp / "claims"
        self.tmp = tmp
        self.ring, self.ids = ring, ids
        self.sealers = {name: self._sealer(name) for name in ROLES}
        self.stores = {name: self._store(name) for name in ("connector", "security", "aggregator")}
        self.endpoints = {
            name: self._endpoint(name, self.stores[name].claims)
            for name in ("security", "aggregator")
        }
        self.services = {"security": security(), "aggregator": aggregator()}
        self.cfg = CampaignConfig.model_validate(
            {
                "campaign_id": "c1",
                "robustness": {"enabled": False},
                "quorum": 1,
                "privacy": {"enabled": False},
            }
        )

    def _sealer(self, name: str) -> Sealer:
        return Sealer(self.ring, sender=name, identity=self.ids[name], trust=self.trust)

    def _store(self, name: str, path: str | None = None) -> SqliteStore:
        store = SqliteStore(self.tmp / (path or f"{name}.sqlite"))
        store.claims = ClaimStore(self.root, name, self._sealer(name), sync=False)
        return store

    def _endpoint(self, name: str, claims: ClaimStore) -> SecureEndpoint:
        endpoint = SecureEndpoint(
            InMemoryBus(),
            self._sealer(name),
            Metrics(name, CollectorRegistry()),
            name,
            roles=ROLES,
        )
        endpoint.claims = claims
        return endpoint

    def replica(self, name: str) -> None:
        """Another replica of ``name`` takes over: same database, nothing in its memory."""
        self.stores[name] = self._store(name)
        self.endpoints[name] = self._endpoint(name, self.stores[name].claims)

    def outbox(self, store: str, msg_type: str) -> list:
        items = [i for i in self.stores[store].pending_outbox(100) if i.msg_type == msg_type]
        for item in items:
            self.stores[store].outbox_done(item.id)
        return items

    async def deliver(self, to: str, item, sender: str) -> None:
        """Seal an outbox row as its sender would, open it at ``to``'s endpoint, handle it."""
        (body,) = self.sealers[sender].seal(
            item.msg_type, item.payload, round_num=item.round_num, datasite_id=item.datasite_id
        )
        await self.handle(to, body, item.msg_type)

    async def handle(self, to: str, body: bytes, msg_type: str) -> None:
        service, store = self.services[to], self.stores[to]

        async def on(kind, payload, envelope) -> None:
            _, handler = service.handler_of(str(getattr(kind, "value", kind)))
            msg = payload if not isinstance(payload, dict) else parse_payload(msg_type, payload)
            with store.transaction() as tx:
                handler(CheckedTransaction(tx, to), msg, envelope)

        await self.endpoints[to]._handle(Delivery(body, msg_type), on)

    def direct(self, to: str, message) -> None:
        """A small control message handled directly (no claim check involved)."""
        _, handler = self.services[to].handler_of(message.msg_type.value)
        with self.stores[to].transaction() as tx:
            handler(CheckedTransaction(tx, to), message, None)

    async def receive_updates(self, values=(1.0, 2.0)) -> list[UpdateRaw]:
        """The campaign starts, the connector sends each site's update by reference, security
        receives them; the round is not closed yet."""
        start = {"campaign_id": "c1", "config": self.cfg.to_payload()}
        for to in ("security", "aggregator"):
            self.direct(to, parse_payload("campaign.start", start))
        raws = [_raw(ds, v) for ds, v in zip(SITES, values, strict=True)]
        with self.stores["connector"].transaction() as tx:
            for raw in raws:
                tx.emit("update.raw", raw.to_payload(), round_num=1, datasite_id=raw.datasite_id)
        for item in self.outbox("connector", "update.raw"):
            await self.deliver("security", item, "connector")
        return raws

    def kv(self, store: str, key: str) -> tuple:
        return self.stores[store]._query("SELECT value, blob FROM kv WHERE key = ?", (key,))[0]

    def blob_files(self, store: str) -> list[Path]:
        return [p for p in self.stores[store]._blobs.directory.iterdir() if p.is_file()]

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


@pytest.fixture
def rnd(tmp_path: Path) -> _Round:
    r = _Round(tmp_path)
    yield r
    r.close()


def _pending(rnd: _Round, ds: str) -> dict:
    with rnd.stores["security"].transaction() as tx:
        return tx.get(f"pending/c1/000001/{ds}")


async def test_security_keeps_the_received_body_as_the_pending_delta_and_writes_no_copy(rnd):
    raws = await rnd.receive_updates()
    for raw in raws:
        _, blob = rnd.kv("security", f"pending/c1/000001/{raw.datasite_id}")
        assert blob.startswith(PIN_PREFIX)  # a pin, no blob file holding the delta again
        kept = rnd.root / "security" / blob[len(PIN_PREFIX) :]
        sent = {p.stat().st_ino for p in (rnd.root / "connector").iterdir()}
        assert kept.stat().st_ino in sent  # a hard link of the connector's body
        assert torch.equal(_pending(rnd, raw.datasite_id)["delta"]["w"], raw.delta["w"])
    assert rnd.blob_files("security") == []


async def test_another_replica_reopens_a_kept_body_with_every_check_and_screens_the_round(rnd):
    raws = await rnd.receive_updates()
    rnd.replica("security")  # nothing of the received updates in its memory
    assert torch.equal(_pending(rnd, "site-b")["delta"]["w"], raws[1].delta["w"])
    rnd.direct("security", RoundClose(campaign_id="c1", round_num=1, expected=list(SITES)))
    screened = rnd.outbox("security", "update.screened")
    assert sorted(i.datasite_id for i in screened) == list(SITES)
    # The aggregator receives the forwarded references and keeps those bodies in turn.
    rnd.direct("aggregator", RoundOpen(campaign_id="c1", round_num=1, model_version=0,
                                       global_model={"w": torch.zeros(N)}))  # fmt: skip
    rnd.direct("aggregator", RoundClose(campaign_id="c1", round_num=1, expected=list(SITES)))
    await rnd.deliver("aggregator", screened[0], "security")
    _, blob = rnd.kv("aggregator", "verdict/c1/000001/site-a")
    assert blob.startswith(PIN_PREFIX)
    rnd.replica("aggregator")
    await rnd.deliver("aggregator", screened[1], "security")
    (done,) = rnd.outbox("aggregator", "round.completed")
    model = done.payload["global_model"]["w"]
    assert torch.allclose(model, torch.full((N,), 1.5))  # the mean of both kept deltas


async def test_a_kept_body_altered_on_disk_is_refused_when_reopened(rnd):
    await rnd.receive_updates()
    _, blob = rnd.kv("security", "pending/c1/000001/site-a")
    path = rnd.root / "security" / blob[len(PIN_PREFIX) :]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # the ciphertext, not the header the digest binds
    path.unlink()  # a new file: the connector's body (another link) is left alone
    path.write_bytes(bytes(data))
    rnd.replica("security")
    with pytest.raises(IntegrityError):
        _pending(rnd, "site-a")


async def test_a_kept_body_swapped_for_another_sites_genuine_body_is_refused(rnd):
    """An attacker with write access to the folder replaces site-a's kept body with site-b's
    (genuine, signed by the connector): the pin's digest and datasite no longer match."""
    await rnd.receive_updates()
    _, a = rnd.kv("security", "pending/c1/000001/site-a")
    _, b = rnd.kv("security", "pending/c1/000001/site-b")
    a_path = rnd.root / "security" / a[len(PIN_PREFIX) :]
    a_path.unlink()
    os.link(rnd.root / "security" / b[len(PIN_PREFIX) :], a_path)
    rnd.replica("security")
    with pytest.raises(IntegrityError):
        _pending(rnd, "site-a")


async def test_a_kept_body_that_vanished_is_a_claim_error_not_a_silent_gap(rnd):
    await rnd.receive_updates()
    _, blob = rnd.kv("security", "pending/c1/000001/site-a")
    (rnd.root / "security" / blob[len(PIN_PREFIX) :]).unlink()
    rnd.replica("security")
    with pytest.raises(ClaimError):
        _pending(rnd, "site-a")


async def test_the_claim_collection_spares_a_pinned_body_and_collects_it_once_unpinned(rnd):
    await rnd.receive_updates()
    store = rnd.stores["security"]
    store.inbox_retention_s = 1.0
    pins = {rnd.kv("security", f"pending/c1/000001/{ds}")[1][len(PIN_PREFIX) :] for ds in SITES}
    old = time.time() - 3600
    for name in pins:
        os.utime(rnd.root / "security" / name, (old, old))
    store.collect_claims()
    assert all((rnd.root / "security" / name).exists() for name in pins)
    rnd.direct("security", RoundClose(campaign_id="c1", round_num=1, expected=list(SITES)))
    rnd.outbox("security", "update.screened")  # published: the forwarding rows are gone
    for name in pins:
        os.utime(rnd.root / "security" / name, (old, old))
    store.collect_claims()
    assert not any((rnd.root / "security" / name).exists() for name in pins)
    assert store.claims._kept_bytes == 0  # the screened round's deltas left memory


async def test_a_rolled_back_handling_leaves_no_kept_body_and_no_cached_delta(rnd):
    await rnd.receive_updates(values=(1.0, 2.0))
    store = rnd.stores["security"]
    before = set((rnd.root / "security").iterdir())
    envelope = type("Env", (), {})()
    envelope.claim = ClaimReference.from_payload(
        {"claim_check": {**_ref_of(rnd, "site-a"), "ref": "connector/" + _connector_name(rnd)}}
    )
    envelope.msg_type, envelope.datasite_id, envelope.round_num = "update.raw", "site-a", 1
    with pytest.raises(RuntimeError), store.transaction() as tx:
        kept = tx.keep_received(envelope, {"delta": {"w": torch.ones(N)}})
        assert kept is not None
        raise RuntimeError("the handler fails after keeping the body")
    store.settle()
    store.claims._own.settle()
    assert set((rnd.root / "security").iterdir()) == before
    assert kept.ref.name not in store.claims._kept


def _connector_name(rnd: _Round) -> str:
    return sorted(p.name for p in (rnd.root / "connector").iterdir())[0]


def _ref_of(rnd: _Round, ds: str) -> dict:
    from federation.wire.envelope import binding_digest

    path = rnd.root / "connector" / _connector_name(rnd)
    body = path.read_bytes()
    return {"sha256": binding_digest(body), "size": len(body)}
