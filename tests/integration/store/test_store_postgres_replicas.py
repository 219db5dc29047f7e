"""PostgreSQL store shared by replicas: locks serialise, the inbox decides, claims end with sessions."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
from federation.errors import ConfigError
from federation.runtime.store import AlreadyHandled

pytestmark = pytest.mark.integration


@pytest.fixture
def replicas(pg_url, tmp_path):
    """Factory of PostgresStore instances on one schema and blob directory (replicas)."""
    from federation.runtime.store_postgres import PostgresStore

    opened = []

    def _open(**kw):
        store = PostgresStore(pg_url, schema="pdmfed_security", blob_dir=tmp_path / "blobs", **kw)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


def _increment(store, lock: str | None, entered: threading.Event | None = None) -> None:
    with store.transaction() as tx:
        if lock is not None:
            tx.lock(lock)
        value = tx.get("counter", 0)
        if entered is not None:
            entered.set()
        time.sleep(0.3)  # the other replica reads meanwhile
        tx.put("counter", value + 1)


@pytest.mark.parametrize("locked", [True, False])
def test_when_two_replicas_update_one_round_at_once__only_the_lock_keeps_both_updates(
    replicas, locked
):
    a, b = replicas(), replicas()
    lock = "round/c1/000001" if locked else None
    entered = threading.Event()
    first = threading.Thread(target=_increment, args=(a, lock, entered))
    first.start()
    entered.wait(5)
    _increment(b, lock)
    first.join()
    # Without the lock, READ COMMITTED lets both read 0: one update is lost. With it, the
    # second waits and reads what the first committed.
    assert a.read("counter") == (2 if locked else 1)


def test_when_two_replicas_handle_copies_of_one_message__exactly_one_effect_commits(replicas):
    a, b = replicas(), replicas()
    started = threading.Event()
    outcome: dict[str, str] = {}

    def handle(store, name: str, hold: float) -> None:
        try:
            with store.transaction() as tx:
                tx.mark_handled(b"same-message", "update.raw")  # first: the race is decided here
                started.set()
                tx.put(f"effect/{name}", True)
                tx.emit("update.screened", {"by": name})
                time.sleep(hold)
            outcome[name] = "committed"
        except AlreadyHandled:
            outcome[name] = "duplicate"

    first = threading.Thread(target=handle, args=(a, "a", 0.3))
    first.start()
    started.wait(5)
    handle(b, "b", 0.0)  # waits on a's uncommitted inbox row, then finds it committed
    first.join()
    assert outcome == {"a": "committed", "b": "duplicate"}
    with a.transaction() as tx:
        assert tx.has("effect/a") and not tx.has("effect/b")
    assert [i.payload for i in a.pending_outbox()] == [{"by": "a"}]


_CLAIM_AND_HANG = """
import sys, time
from federation.runtime.store_postgres import PostgresStore
store = PostgresStore(sys.argv[1], schema="pdmfed_security", blob_dir=sys.argv[2])
claim = store.claim_outbox()
print(claim.head.id, flush=True)
time.sleep(600)
"""


def test_when_the_replica_holding_an_outbox_claim_is_killed__another_replica_takes_the_message(
    replicas, pg_url, tmp_path
):
    b = replicas()
    with b.transaction() as tx:
        tx.emit("round.completed", {"round_num": 1})
        tx.emit("campaign.completed", {"round_num": 1})
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLAIM_AND_HANG, pg_url, str(tmp_path / "blobs")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        held = int(proc.stdout.readline())
        other = b.claim_outbox()
        assert other.head.id != held  # never the same message to two publishers
        assert b.claim_outbox() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 10
    taken = b.claim_outbox()
    while taken is None and time.monotonic() < deadline:  # the server notices the closed socket
        time.sleep(0.05)
        taken = b.claim_outbox()
    assert taken is not None and taken.head.id == held
    taken.done()
    other.done()
    assert b.pending_outbox_heads() == []


def test_when_replicas_start_together__the_schema_is_migrated_once(pg_url, tmp_path):
    from federation.runtime.store_postgres import SCHEMA_VERSION, PostgresStore

    stores, errors = [], []

    def start() -> None:
        try:
            stores.append(
                PostgresStore(pg_url, schema="pdmfed_aggregator", blob_dir=tmp_path / "b")
            )
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(stores) == 4
        rows = stores[0]._query("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for s in stores:
            s.close()


def test_when_the_database_is_unreachable__opening_fails_with_one_line_and_no_password(tmp_path):
    from federation.runtime.store_postgres import PostgresStore

    url = "postgresql://pdmfed:s3cret-pass@127.0.0.1:9/pdmfed"  # nothing listens on port 9
    with pytest.raises(ConfigError) as err:
        PostgresStore(
            url, schema="pdmfed_trainer_dispatch", blob_dir=tmp_path / "b", connect_timeout_s=1
        )
    text = str(err.value)
    assert "cannot reach the state database" in text and "s3cret-pass" not in text
    assert "\n" not in text.strip()
