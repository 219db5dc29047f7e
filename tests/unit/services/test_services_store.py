"""SQLite store specifics (the contract on both backends: tests/integration/store)."""

from __future__ import annotations

import pytest
import torch
from federation.runtime.store_sqlite import SCHEMA_VERSION, SqliteStore


def _big(seed: float) -> dict:
    return {"delta": {"w": torch.full((200_000,), seed)}}  # 800 KB: above BLOB_MIN_BYTES


def _blob_files(path, store=None):
    if store is not None:
        store.settle()  # dropped files are unlinked on a background thread
    return sorted(p.name for p in (path.parent / (path.name + ".blobs")).iterdir())


def test_when_the_store_is_in_memory__big_values_round_trip_without_files():
    store = SqliteStore()
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
    store = SqliteStore(path)
    assert store.read("k") == {"v": 1} and store.schema_version == SCHEMA_VERSION
    with store.transaction() as tx:
        tx.put("big", _big(2.0))
    assert float(store.read("big")["delta"]["w"][0]) == 2.0


def test_when_a_payload_was_just_committed__the_flush_gets_it_from_memory_not_disk(
    tmp_path, monkeypatch
):
    from federation.runtime import store as store_module

    path = tmp_path / "s.sqlite"
    store = SqliteStore(path)
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
    store = SqliteStore(tmp_path / "s.sqlite")
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
    store = SqliteStore(path)
    with store.transaction() as tx:
        tx.put("a", _big(1.0))
        tx.put("b", _big(2.0))
    with store.transaction() as tx:
        tx.delete("a")
        tx.delete("b")
    store.close()  # waits for the pending unlinks
    assert _blob_files(path) == []
    assert unlinked_on == ["pdmfed-blob-unlink"] * 2
