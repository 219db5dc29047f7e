"""Replay protection shared through the real Redis by two guard/sealer instances."""

from __future__ import annotations

import os
import time

import pytest
import redis
from federation.config import Settings
from federation.crypto import KeyRing, ReplayGuard, Sealer
from federation.crypto.replay import RedisSeenStore, SeenStoreUnavailable, seen_store_from_settings
from federation.errors import ReplayError

pytestmark = pytest.mark.integration


def test_when_two_guards_share_redis__a_msg_id_accepted_by_one_is_a_replay_for_the_other(
    redis_namespace, redis_url
):
    first = ReplayGuard(RedisSeenStore(redis_url, redis_namespace), window_s=60)
    second = ReplayGuard(RedisSeenStore(redis_url, redis_namespace), window_s=60)
    msg_id = os.urandom(16)
    first.check(msg_id, time.time())
    with pytest.raises(ReplayError):
        second.check(msg_id, time.time())
    second.check(os.urandom(16), time.time())  # other ids are unaffected


def test_when_two_replicas_open_the_same_body__only_the_first_accepts_it(
    redis_namespace, redis_url
):
    ring = KeyRing("k1", {"k1": os.urandom(32)})
    replicas = [
        Sealer(
            ring,
            sender="security-0",
            require_signature=False,
            replay=ReplayGuard(RedisSeenStore(redis_url, redis_namespace), window_s=60),
        )
        for _ in range(2)
    ]
    (body,) = replicas[0].seal("update.raw", {"x": 1})
    assert replicas[0].open(body).payload == {"x": 1}
    with pytest.raises(ReplayError):
        replicas[1].open(body)


def test_when_the_ttl_passes__redis_forgets_the_id(redis_namespace, redis_url):
    store = RedisSeenStore(redis_url, redis_namespace)
    assert store.add_if_new(b"t" * 16, 0.2) is True
    assert store.add_if_new(b"t" * 16, 0.2) is False
    ttl_ms = redis.Redis.from_url(redis_url).pttl(f"{redis_namespace}:{(b't' * 16).hex()}")
    assert 0 < ttl_ms <= 200
    time.sleep(0.3)
    assert store.add_if_new(b"t" * 16, 0.2) is True


def test_when_settings_name_redis__the_store_is_shared_per_service(redis_namespace, redis_url):
    settings = Settings(redis_url=redis_url, service_id=f"svc-{redis_namespace[-8:]}")
    a, b = seen_store_from_settings(settings), seen_store_from_settings(settings)
    other = seen_store_from_settings(Settings(redis_url=redis_url, service_id="another-service"))
    msg_id = os.urandom(16)
    assert a.add_if_new(msg_id, 5) and not b.add_if_new(msg_id, 5)
    assert other.add_if_new(msg_id, 5)  # fan-out to another service is not a replay
    for store in (a, other):
        redis.Redis.from_url(redis_url).delete(f"{store.namespace}:{msg_id.hex()}")


def test_when_redis_is_unreachable__the_store_fails_closed_with_a_typed_error():
    store = RedisSeenStore("redis://127.0.0.1:1/0")
    with pytest.raises(SeenStoreUnavailable):
        store.add_if_new(os.urandom(16), 5)
