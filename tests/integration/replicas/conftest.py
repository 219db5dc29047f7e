"""Replica tests: real service processes over RabbitMQ and a scratch PostgreSQL database each."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
for path in (HERE, HERE.parent / "store", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
from store_helpers import ADMIN_URL, postgres_unavailable  # noqa: E402


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database for this test, dropped afterwards."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from federation.runtime.store_postgres import scratch_database

    with scratch_database(ADMIN_URL, "replicas") as url:
        yield url
