"""Fixtures for crypto integration tests: the local Redis, skipped only when unreachable."""

from __future__ import annotations

import os
import uuid

import pytest

REDIS_URL = os.environ.get("PDMFED_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """The Redis the integration tests use (PDMFED_TEST_REDIS_URL, default the local one)."""
    return REDIS_URL


@pytest.fixture
def redis_namespace():
    """A fresh key namespace on the real Redis; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"Redis is unreachable at {REDIS_URL}: {exc}")
    namespace = f"pdmfed:test:{uuid.uuid4().hex}"
    yield namespace
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()
