"""The store contract, on SQLite and PostgreSQL alike: one transaction for state, inbox and outbox;
big values out of line; versioned, idempotent migrations."""

from __future__ import annotations

import os
import time

import pytest
import torch
from federation.errors import ConfigError
from federation.runtime.store import AlreadyHandled

pytestmark = pytest.mark.integration


def _big(seed: float) -> dict:
    return {"delta": {"w": torch.full((200_000,), seed)}}  # 800 KB: above BLOB_MIN_BYTES


def _blob_files(store) -> list[str]:
    store.settle()  # dropped files are unlinked on a background thread
    return sorted(p.name for p in store._blobs.directory.iterdir())


def test_when_a_handler_fails_mid_transaction__state_inbox_outbox_and_files_are_rolled_back(
    open_store,
):
    store = open_store()
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put("round/1", {"status": "open"})
            tx.put("big", _big(1.0))
            tx.mark_handled(b"m1", "round.open")
            tx.emit("round.close", {"round_num": 1})
            raise RuntimeError("crash before commit")
    with store.transaction() as tx:
        assert tx.get("round/1") is None and not tx.seen(b"m1") and not tx.has("big")
    assert store.pending_outbox() == [] and _blob_files(store) == []


def test_when_a_transaction_commits__a_reopened_store_sees_state_inbox_and_pending_outbox(
    open_store,
):
    store = open_store()
    with store.transaction() as tx:
        tx.put("model", {"version": 3, "w": torch.arange(4.0)})
        tx.mark_handled(b"m2", "update.raw")
        tx.emit("round.completed", {"round_num": 2}, round_num=2)
    store.close()
    again = open_store()  # as after a SIGKILL and restart (or another replica)
    assert torch.equal(again.read("model")["w"], torch.arange(4.0))
    with again.transaction() as tx:
        assert tx.seen(b"m2") and not tx.seen(b"m3")
    (item,) = again.pending_outbox()
    assert (item.msg_type, item.payload, item.round_num) == ("round.completed", {"round_num": 2}, 2)
    again.outbox_done(item.id)
    assert again.pending_outbox() == []


def test_when_a_message_id_is_marked_twice__the_second_transaction_is_refused_and_rolled_back(
    open_store,
):
    store = open_store()
    with store.transaction() as tx:
        tx.mark_handled(b"dup", "update.raw")
        tx.put("count", 1)
    with pytest.raises(AlreadyHandled):
        with store.transaction() as tx:
            tx.put("count", 2)
            tx.emit("update.screened", {"n": 2})
            tx.mark_handled(b"dup", "update.raw")
    assert store.read("count") == 1 and store.pending_outbox() == []


def test_when_listing_keys_by_prefix__only_that_prefix_is_returned_in_bytewise_order(open_store):
    store = open_store()
    with store.transaction() as tx:
        for k in ("campaign/b", "campaign/a", "campaign/B", "round/a/000001", "campaignx"):
            tx.put(k, 1)
        assert tx.keys("campaign/") == ["campaign/B", "campaign/a", "campaign/b"]


def test_when_big_values_are_stored__they_live_in_files_that_follow_the_transactions(open_store):
    store = open_store()
    with store.transaction() as tx:
        tx.put("update/a", _big(1.0))
        tx.emit("update.screened", _big(2.0))
    first = set(_blob_files(store))
    assert len(first) == 2
    with store.transaction() as tx:
        tx.put("update/a", _big(3.0))  # overwrite: the old file goes once this commits
    assert len(_blob_files(store)) == 2 and len(first - set(_blob_files(store))) == 1
    assert float(store.read("update/a")["delta"]["w"][0]) == 3.0
    (item,) = store.pending_outbox()
    assert float(item.payload["delta"]["w"][-1]) == 2.0
    store.outbox_done(item.id)
    with store.transaction() as tx:
        tx.delete("update/a")
    assert _blob_files(store) == []


def test_when_a_transaction_with_big_values_rolls_back__no_file_and_the_old_value_stay(open_store):
    store = open_store()
    with store.transaction() as tx:
        tx.put("k", _big(1.0))
    before = _blob_files(store)
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put("k", _big(5.0))
            tx.delete("k")
            tx.emit("x", _big(6.0))
            raise RuntimeError("crash before commit")
    assert _blob_files(store) == before
    assert float(store.read("k")["delta"]["w"][0]) == 1.0 and store.pending_outbox() == []


def test_when_a_crash_left_unreferenced_files__the_owner_removes_them_past_the_grace_and_keeps_live_ones(
    open_store,
):
    store = open_store()
    with store.transaction() as tx:
        tx.put("k", _big(1.0))
    store.close()
    directory = store._blobs.directory
    old = time.time() - 3600
    for name in ("0123orphan", "feed.tmp"):  # left by a crash: unreferenced, an hour old
        (directory / name).write_bytes(b"x" * 10)
        os.utime(directory / name, (old, old))
    (directory / "young").write_bytes(b"y")  # maybe another replica's uncommitted write
    reader = open_store()  # a reader (pdmfed status) never removes files
    assert len(_blob_files(reader)) == 4
    reader.close()
    again = open_store(collect_orphans=True)  # the owning service, restarted
    left = _blob_files(again)
    assert "0123orphan" not in left and "feed.tmp" not in left
    # SQLite has one owner (nothing young to spare); PostgreSQL replicas share the directory
    assert ("young" in left) == (again.orphan_grace_s > 0)
    assert float(again.read("k")["delta"]["w"][0]) == 1.0


def test_when_claiming_the_outbox__each_message_goes_to_one_publisher_until_done_or_released(
    open_store,
):
    store = open_store()
    with store.transaction() as tx:
        for n in range(3):
            tx.emit("x", {"n": n})
    first, second = store.claim_outbox(), store.claim_outbox()
    assert (first.head.id, second.head.id) == tuple(h.id for h in store.pending_outbox_heads()[:2])
    third = store.claim_outbox()
    assert store.claim_outbox() is None  # all three held
    second.release()
    again = store.claim_outbox()
    assert again.head.id == second.head.id
    for claim in (first, again, third):
        claim.done()
    assert store.pending_outbox_heads() == [] and store.claim_outbox() is None


def test_when_a_store_opens__its_schema_is_at_the_current_version_and_reopening_changes_nothing(
    open_store, backend
):
    from federation.runtime import store_postgres, store_sqlite

    current = (store_sqlite if backend == "sqlite" else store_postgres).SCHEMA_VERSION
    store = open_store()
    with store.transaction() as tx:
        tx.put("k", {"v": 1})
    assert store.schema_version == current
    store.close()
    again = open_store()
    assert again.schema_version == current and again.read("k") == {"v": 1}


def test_when_the_schema_is_newer_than_this_build__the_store_refuses_to_open(open_store, backend):
    store = open_store()
    if backend == "sqlite":
        store._query("PRAGMA user_version = 999")
    else:
        store._query("INSERT INTO schema_version (version, description) VALUES (999, 'future')")
    store.close()
    with pytest.raises(ConfigError, match="999"):
        open_store()


def test_when_a_value_keeps_a_received_claim_body__it_pins_it_across_a_restart_until_deleted(
    open_store, tmp_path
):
    """A received update kept as its claim body: no blob file, the pin survives a restart (the
    delta reopened from the body), the collection spares the body while the row pins it."""
    from types import SimpleNamespace

    from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
    from federation.runtime.claims import ClaimStore
    from federation.wire.codec import encode_payload_parts
    from federation.wire.messages import UpdateRaw

    ring = KeyRing("k1", {"k1": os.urandom(32)})
    ident = SigningIdentity.generate("connector")
    trust = TrustStore({"connector": ident.public_bytes()})
    root = tmp_path / "claims"
    sent = ClaimStore(root, "connector", Sealer(ring, sender="connector", identity=ident))
    raw = UpdateRaw(campaign_id="c1", round_num=1, datasite_id="site-a", model_version=0,
                    delta=_big(5.0)["delta"], num_samples=7)  # fmt: skip
    ref = sent.deposit("update.raw", encode_payload_parts(raw.to_payload()),
                       datasite_id="site-a", round_num=1)  # fmt: skip
    envelope = SimpleNamespace(claim=ref, msg_type="update.raw", datasite_id="site-a", round_num=1)

    def opened():
        store = open_store(inbox_retention_s=1.0)
        store.claims = ClaimStore(root, "security", Sealer(ring, sender="security", trust=trust))
        return store

    store = opened()
    with store.transaction() as tx:
        kept = tx.keep_received(envelope, {"delta": raw.delta})
        tx.put("pending/site-a", {"num_samples": 7, "delta": raw.delta}, kept=kept)
    assert _blob_files(store) == []
    restarted = opened()  # nothing in memory: the delta comes from the body, checked again
    got = restarted.read("pending/site-a")
    assert got["num_samples"] == 7 and torch.equal(got["delta"]["w"], raw.delta["w"])
    link = root / "security" / kept.ref.name
    old = time.time() - 3600
    os.utime(link, (old, old))
    assert restarted.collect_claims() == 0 and link.exists()  # pinned: spared however old
    with restarted.transaction() as tx:
        tx.delete("pending/site-a")
    os.utime(link, (old, old))
    assert restarted.collect_claims() == 1 and not link.exists()
