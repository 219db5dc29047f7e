"""Replay guard: in-memory seen store (bounded, expiring) and the freshness window."""

from __future__ import annotations

import pytest
from federation.config import Settings
from federation.crypto.replay import (
    InMemorySeenStore,
    RedisSeenStore,
    ReplayGuard,
    seen_store_from_settings,
)
from federation.errors import ExpiredError, ReplayError


class _Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_when_id_is_added_twice__second_add_is_refused_until_it_expires():
    clock = _Clock()
    store = InMemorySeenStore(clock=clock)
    assert store.add_if_new(b"a", 10) is True
    assert store.add_if_new(b"a", 10) is False
    clock.now += 10.5
    assert store.add_if_new(b"a", 10) is True


def test_when_store_is_full__oldest_ids_are_evicted_and_counted():
    store = InMemorySeenStore(max_items=3, clock=_Clock())
    for i in range(5):
        assert store.add_if_new(bytes([i]), 100)
    assert len(store) == 3 and store.evictions == 2
    assert store.add_if_new(bytes([4]), 100) is False
    assert store.add_if_new(bytes([0]), 100) is True


def test_when_message_is_fresh__guard_accepts_once_then_reports_replay():
    guard = ReplayGuard(InMemorySeenStore(), window_s=60)
    guard.check(b"m" * 16, 1000.0, now=1000.0)
    with pytest.raises(ReplayError) as err:
        guard.check(b"m" * 16, 1000.0, now=1001.0)
    assert err.value.reason == "replay"


@pytest.mark.parametrize("timestamp", [939.0, 1061.0, float("nan"), float("inf")])
def test_when_timestamp_is_outside_the_window__guard_reports_expired(timestamp):
    guard = ReplayGuard(InMemorySeenStore(), window_s=60)
    with pytest.raises(ExpiredError) as err:
        guard.check(b"e" * 16, timestamp, now=1000.0)
    assert err.value.reason == "expired"
    guard.check(b"e" * 16, 1000.0, now=1000.0)  # an expired message was not remembered


def test_when_message_is_accepted__its_id_is_remembered_as_long_as_it_is_fresh():
    clock = _Clock(0.0)
    store = InMemorySeenStore(clock=clock)
    guard = ReplayGuard(store, window_s=60, clock=clock)
    guard.check(b"x" * 16, 30.0)  # fresh until t=90
    clock.now = 89.0
    with pytest.raises(ReplayError):
        guard.check(b"x" * 16, 30.0)


def test_when_redis_url_is_set__settings_select_the_redis_store_per_service():
    assert isinstance(seen_store_from_settings(Settings()), InMemorySeenStore)
    store = seen_store_from_settings(
        Settings(redis_url="redis://127.0.0.1:1/0", service_id="security")
    )
    assert isinstance(store, RedisSeenStore) and store.namespace == "pdmfed:seen:security"


@pytest.mark.parametrize("ahead", [31.0, 120.0, 600.0])
def test_when_a_key_holder_dates_a_message_in_the_future__beyond_the_clock_skew_it_is_expired(
    ahead,
):
    """A message dated ahead stays 'fresh' (and replayable) longer: accept at most the skew."""
    settings = Settings(clock_skew_s=30.0, message_ttl_s=600.0)
    guard = ReplayGuard.from_settings(InMemorySeenStore(), settings)
    with pytest.raises(ExpiredError, match="future"):
        guard.check(b"f" * 16, 1000.0 + ahead, now=1000.0)
    guard.check(b"g" * 16, 1000.0 + 30.0, now=1000.0)  # within the skew
    guard.check(b"h" * 16, 1000.0 - 630.0, now=1000.0)  # as old as the window


def test_when_no_skew_is_given__the_guard_defaults_to_the_settings_default_not_the_window():
    guard = ReplayGuard(InMemorySeenStore(), window_s=630.0)
    assert guard.future_s == Settings().clock_skew_s
    with pytest.raises(ExpiredError):
        guard.check(b"f" * 16, 1000.0 + 60.0, now=1000.0)


def test_when_a_message_is_prechecked__nothing_is_remembered_and_a_seen_id_is_a_replay():
    clock = _Clock(1000.0)
    store = InMemorySeenStore(clock=clock)
    guard = ReplayGuard(store, window_s=60, clock=clock)
    guard.precheck(b"p" * 16, 1000.0)
    guard.precheck(b"p" * 16, 1000.0)
    assert len(store) == 0 and not store.seen(b"p" * 16)
    with pytest.raises(ExpiredError):
        guard.precheck(b"p" * 16, 900.0)
    guard.check(b"p" * 16, 1000.0)
    assert store.seen(b"p" * 16)
    with pytest.raises(ReplayError):
        guard.precheck(b"p" * 16, 1000.0)
    clock.now += 62  # forgotten with its freshness
    assert not store.seen(b"p" * 16)


def test_when_a_store_cannot_peek__precheck_checks_freshness_only():
    class AddOnly:
        def add_if_new(self, msg_id: bytes, ttl_s: float) -> bool:
            return False

    guard = ReplayGuard(AddOnly(), window_s=60)
    guard.precheck(b"q" * 16, 1000.0, now=1000.0)
    with pytest.raises(ReplayError):
        guard.check(b"q" * 16, 1000.0, now=1000.0)
