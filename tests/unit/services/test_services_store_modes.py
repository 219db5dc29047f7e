"""State files hold model deltas and campaign state: readable by the service's user only."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from federation.runtime.store_sqlite import SqliteStore


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _big() -> dict:
    return {"delta": torch.ones(200_000)}  # 800 KB: stored as a blob file beside the database


@pytest.fixture(autouse=True)
def permissive_umask():
    old = os.umask(0o022)  # the usual default: files 0644, directories 0755
    yield
    os.umask(old)


def test_when_a_service_commits_state__no_other_local_user_can_read_any_of_it(tmp_path):
    state = tmp_path / "state"
    store = SqliteStore(state / "security.sqlite")
    with store.transaction() as tx:
        tx.put("update/1", _big())
    try:
        files = [
            state / "security.sqlite",
            state / "security.sqlite-wal",
            state / "security.sqlite-shm",
        ]
        blob_dir = state / "security.sqlite.blobs"
        files += [p for p in blob_dir.iterdir()]
        assert len(files) > 3, "the big value was not stored as a file"
        modes = {p.name: oct(_mode(p)) for p in files if p.exists()}
        assert set(modes.values()) == {"0o600"}, modes
        assert (oct(_mode(state)), oct(_mode(blob_dir))) == ("0o700", "0o700")
    finally:
        store.close()


def test_when_an_old_store_was_world_readable__opening_it_tightens_it(tmp_path):
    state = tmp_path / "state"
    SqliteStore(state / "aggregator.sqlite").close()
    for p in [state, state / "aggregator.sqlite.blobs"]:
        p.chmod(0o755)
    (state / "aggregator.sqlite").chmod(0o644)
    SqliteStore(state / "aggregator.sqlite").close()
    assert oct(_mode(state / "aggregator.sqlite")) == "0o600"
    assert oct(_mode(state)) == oct(_mode(state / "aggregator.sqlite.blobs")) == "0o700"
