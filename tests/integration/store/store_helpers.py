"""The PostgreSQL server the tests use, and whether it answers."""

from __future__ import annotations

import os

#: PDMFED_TEST_POSTGRES_URL; the local server (trust auth) by default. Each test makes its own
#: scratch database there (federation.runtime.store_postgres.scratch_database).
ADMIN_URL = os.environ.get(
    "PDMFED_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def postgres_unavailable() -> str | None:
    """None when the server answers; otherwise why not (the skip reason)."""
    import psycopg

    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {ADMIN_URL}: {type(exc).__name__}: {exc}".strip()
