"""Stores of both backends on real storage: SQLite files and scratch PostgreSQL databases."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import ADMIN_URL, postgres_unavailable  # noqa: E402

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database for this test (skipped only when the server is down)."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from federation.runtime.store_postgres import scratch_database

    with scratch_database(ADMIN_URL, "test") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def open_store(backend, tmp_path, request) -> Iterator[Callable[..., object]]:
    """Factory: ``open_store(**kw)`` opens (again) this test's store of the parametrised backend;
    every store opened is closed at teardown. Several opens share the same state, as replicas
    (PostgreSQL) or a restarted process (SQLite) do."""
    from federation.runtime.store_sqlite import SqliteStore

    opened = []
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None

    def _open(**kw):
        if backend == "sqlite":
            store = SqliteStore(tmp_path / "s.sqlite", **kw)
        else:
            from federation.runtime.store_postgres import PostgresStore

            store = PostgresStore(url, schema="pdmfed_test", blob_dir=tmp_path / "blobs", **kw)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        try:
            store.close()
        except Exception:  # already closed by the test
            pass
