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
