"""ServiceStore: one transaction for state, inbox and outbox; rollback leaves no trace."""

from __future__ import annotations

import pytest
import torch
from federation.runtime.store import ServiceStore


def test_when_a_handler_fails_mid_transaction__state_inbox_and_outbox_are_rolled_back(tmp_path):
    store = ServiceStore(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put("round/1", {"status": "open"})
            tx.mark_handled(b"m1", "round.open")
            tx.emit("round.close", {"round_num": 1})
            raise RuntimeError("crash before commit")
    with store.transaction() as tx:
        assert tx.get("round/1") is None and not tx.seen(b"m1")
    assert store.pending_outbox() == []


def test_when_a_transaction_commits__a_reopened_store_sees_state_inbox_and_pending_outbox(tmp_path):
    path = tmp_path / "s.sqlite"
    store = ServiceStore(path)
    with store.transaction() as tx:
        tx.put("model", {"version": 3, "w": torch.arange(4.0)})
        tx.mark_handled(b"m2", "update.raw")
        tx.emit("round.completed", {"round_num": 2}, round_num=2)
    store.close()
    again = ServiceStore(path)  # as after a SIGKILL and restart
    assert torch.equal(again.read("model")["w"], torch.arange(4.0))
    with again.transaction() as tx:
        assert tx.seen(b"m2") and not tx.seen(b"m3")
    (item,) = again.pending_outbox()
    assert (item.msg_type, item.payload, item.round_num) == ("round.completed", {"round_num": 2}, 2)
    again.outbox_done(item.id)
    assert again.pending_outbox() == []


def test_when_listing_keys_by_prefix__only_that_prefix_is_returned_in_order():
    store = ServiceStore()
    with store.transaction() as tx:
        for k in ("campaign/b", "campaign/a", "round/a/000001", "campaignx"):
            tx.put(k, 1)
        assert tx.keys("campaign/") == ["campaign/a", "campaign/b"]


def _big(seed: float) -> dict:
    return {"delta": {"w": torch.full((200_000,), seed)}}  # 800 KB: above BLOB_MIN_BYTES


def _blob_files(path, store=None):
    if store is not None:
        store.settle()  # dropped files are unlinked on a background thread
    return sorted(p.name for p in (path.parent / (path.name + ".blobs")).iterdir())


def test_when_big_values_are_stored__they_live_in_files_that_follow_the_transactions(tmp_path):
    path = tmp_path / "s.sqlite"
    store = ServiceStore(path)
    with store.transaction() as tx:
        tx.put("update/a", _big(1.0))
        tx.emit("update.screened", _big(2.0))
    assert len(_blob_files(path)) == 2
    first = set(_blob_files(path))
    with store.transaction() as tx:
        tx.put("update/a", _big(3.0))  # overwrite: the old file goes once this commits
    assert len(_blob_files(path, store)) == 2 and len(first - set(_blob_files(path))) == 1
    assert float(store.read("update/a")["delta"]["w"][0]) == 3.0
    (item,) = store.pending_outbox()
    assert float(item.payload["delta"]["w"][-1]) == 2.0
    store.outbox_done(item.id)
    with store.transaction() as tx:
        tx.delete("update/a")
    assert _blob_files(path, store) == []


def test_when_a_transaction_with_big_values_rolls_back__no_file_and_the_old_value_stay(tmp_path):
    path = tmp_path / "s.sqlite"
    store = ServiceStore(path)
    with store.transaction() as tx:
        tx.put("k", _big(1.0))
    before = _blob_files(path)
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put("k", _big(5.0))
            tx.delete("k")
            tx.emit("x", _big(6.0))
            raise RuntimeError("crash before commit")
    assert _blob_files(path, store) == before
    assert float(store.read("k")["delta"]["w"][0]) == 1.0 and store.pending_outbox() == []


def test_when_a_crash_left_an_unreferenced_file__reopening_removes_it_and_keeps_live_ones(tmp_path):
    path = tmp_path / "s.sqlite"
    store = ServiceStore(path)
    with store.transaction() as tx:
        tx.put("k", _big(1.0))
    store.close()
    blobs = path.parent / (path.name + ".blobs")
    (blobs / "0123orphan").write_bytes(b"x" * 10)
    (blobs / "feed.tmp").write_bytes(b"half-written")
    reader = ServiceStore(path)  # a reader (pdmfed status) never removes files
    assert len(_blob_files(path)) == 3
    reader.close()
    again = ServiceStore(path, collect_orphans=True)  # the owning service, restarted
    assert len(_blob_files(path)) == 1
    assert float(again.read("k")["delta"]["w"][0]) == 1.0


def test_when_the_store_is_in_memory__big_values_round_trip_without_files():
    store = ServiceStore()
    with store.transaction() as tx:
        tx.put("k", _big(4.0))
        tx.emit("x", _big(7.0))
    assert float(store.read("k")["delta"]["w"][1]) == 4.0
    (item,) = store.pending_outbox()
    store.outbox_done(item.id)
    with store.transaction() as tx:
        tx.delete("k")
    assert store._blobs._memory == {}


def test_when_a_store_from_before_blob_files_is_opened__its_rows_still_read(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);"
        "CREATE TABLE inbox (msg_id BLOB PRIMARY KEY, msg_type TEXT, at REAL);"
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, msg_type TEXT NOT NULL,"
        " payload BLOB NOT NULL, datasite_id TEXT NOT NULL, round_num INTEGER NOT NULL);"
    )
    from federation.wire.codec import encode_payload

    conn.execute("INSERT INTO kv VALUES (?, ?)", ("k", encode_payload({"v": 1})))
    conn.commit()
    conn.close()
    store = ServiceStore(path)
    assert store.read("k") == {"v": 1}
    with store.transaction() as tx:
        tx.put("big", _big(2.0))
    assert float(store.read("big")["delta"]["w"][0]) == 2.0


def test_when_a_payload_was_just_committed__the_flush_gets_it_from_memory_not_disk(tmp_path, monkeypatch):
    from federation.runtime import store as store_module

    path = tmp_path / "s.sqlite"
    store = ServiceStore(path)
    payload = _big(9.0)
    with store.transaction() as tx:
        tx.emit("update.raw", payload)
    (head,) = store.pending_outbox_heads()
    assert store.cached_outbox_payload(head.id) is payload  # no read-back, no decode
    store.outbox_done(head.id)
    assert store.cached_outbox_payload(head.id) is None and store._emitted_bytes == 0

    monkeypatch.setattr(store_module, "EMITTED_CACHE_BYTES", 1024)  # too big to keep in memory
    with store.transaction() as tx:
        tx.emit("update.raw", _big(8.0))
    (head,) = store.pending_outbox_heads()
    assert store.cached_outbox_payload(head.id) is None
    assert float(store.outbox_payload(head.id)["delta"]["w"][0]) == 8.0  # read from its file


def test_when_a_transaction_with_emits_rolls_back__nothing_is_cached(tmp_path):
    store = ServiceStore(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.emit("x", {"a": 1})
            raise RuntimeError("crash")
    assert store._emitted == {} and store.pending_outbox_heads() == []



def test_when_a_commit_drops_big_values__their_files_are_unlinked_off_the_committing_thread(
    tmp_path, monkeypatch
):
    import pathlib
    import threading

    unlinked_on: list[str] = []
    real_unlink = pathlib.Path.unlink

    def recording_unlink(self, missing_ok=False):
        unlinked_on.append(threading.current_thread().name)
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, "unlink", recording_unlink)
    path = tmp_path / "s.sqlite"
    store = ServiceStore(path)
    with store.transaction() as tx:
        tx.put("a", _big(1.0))
        tx.put("b", _big(2.0))
    with store.transaction() as tx:
        tx.delete("a")
        tx.delete("b")
    store.close()  # waits for the pending unlinks
    assert _blob_files(path) == []
    assert unlinked_on == ["pdmfed-blob-unlink"] * 2
