"""Freshness: a seen-msg_id store (in-memory or Redis) and the timestamp window check."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from federation.errors import BusError, ExpiredError, ReplayError

__all__ = [
    "SeenStore",
    "SeenStoreUnavailable",
    "InMemorySeenStore",
    "RedisSeenStore",
    "ReplayGuard",
    "DEFAULT_CLOCK_SKEW_S",
    "seen_store_from_settings",
]


class SeenStoreUnavailable(BusError):
    """The shared seen-id store cannot be reached: fail closed, requeue and retry later."""

    reason = "bus"


@runtime_checkable
class SeenStore(Protocol):
    """Remembers message ids for a while."""

    def add_if_new(self, msg_id: bytes, ttl_s: float) -> bool:
        """Remember ``msg_id`` for ``ttl_s`` seconds; False if it was already there."""
        ...


def _seen(store: SeenStore, msg_id: bytes) -> bool:
    """Whether ``store`` remembers ``msg_id`` (False for a store that cannot tell without
    remembering it: the authoritative ``add_if_new`` still comes after decryption)."""
    seen = getattr(store, "seen", None)
    return bool(seen(msg_id)) if seen is not None else False


class InMemorySeenStore:
    """A bounded, expiring seen-id set for one process (evicts the oldest when full)."""

    #: ``add_if_new`` never waits on I/O (callers may run it on an event loop).
    performs_io = False

    def __init__(self, max_items: int = 200_000, clock: Callable[[], float] = time.monotonic):
        if max_items < 1:
            raise ValueError("max_items must be positive")
        self.max_items = max_items
        self.evictions = 0
        self._clock = clock
        self._items: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def add_if_new(self, msg_id: bytes, ttl_s: float) -> bool:
        now = self._clock()
        key = bytes(msg_id)
        with self._lock:
            expiry = self._items.get(key)
            if expiry is not None and expiry > now:
                return False
            self._items.pop(key, None)
            self._items[key] = now + max(ttl_s, 0.0)
            # Insertion order approximates expiry order: purge expired entries from the front.
            while self._items:
                first_key, first_exp = next(iter(self._items.items()))
                if first_exp > now and len(self._items) <= self.max_items:
                    break
                if first_exp > now:
                    self.evictions += 1
                self._items.popitem(last=False)
            return True

    def seen(self, msg_id: bytes) -> bool:
        """Whether ``msg_id`` is remembered (read-only)."""
        with self._lock:
            expiry = self._items.get(bytes(msg_id))
        return expiry is not None and expiry > self._clock()


class RedisSeenStore:
    """Seen ids shared by a service's replicas: ``SET <namespace>:<hex id> 1 NX PX ttl``.

    Use one namespace per consuming service (not per replica): services that receive the same
    fanned-out message must not see each other's ids.
    """

    #: ``add_if_new`` is a network round trip: keep it off the event loop.
    performs_io = True

    def __init__(
        self,
        url: str,
        namespace: str = "pdmfed:seen",
        *,
        client: Any = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import redis

        self.namespace = namespace
        self._errors = (redis.RedisError, OSError)
        # credentials given apart from the URL win over any in it (rediss:// is TLS)
        auth = {"username": username, "password": password} if password is not None else {}
        self._client = client or redis.Redis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=5.0, **auth
        )

    def add_if_new(self, msg_id: bytes, ttl_s: float) -> bool:
        key = f"{self.namespace}:{bytes(msg_id).hex()}"
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        try:
            return bool(self._client.set(key, b"1", nx=True, px=ttl_ms))
        except self._errors as exc:
            raise SeenStoreUnavailable(f"seen-id store unreachable: {type(exc).__name__}") from exc

    def seen(self, msg_id: bytes) -> bool:
        """Whether ``msg_id`` is remembered (read-only: GET, which the role's ACL allows)."""
        try:
            return self._client.get(f"{self.namespace}:{bytes(msg_id).hex()}") is not None
        except self._errors as exc:
            raise SeenStoreUnavailable(f"seen-id store unreachable: {type(exc).__name__}") from exc

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


#: How far ahead of this host's clock a sender's may run (PDMFED_CLOCK_SKEW_S's default).
DEFAULT_CLOCK_SKEW_S = 30.0


class ReplayGuard:
    """Rejects stale or repeated messages; remembers an id only when the check passes.

    A message is fresh while ``now - window_s <= timestamp <= now + future_s`` (``future_s`` is
    the allowed clock skew, not the window: a message dated ahead would otherwise stay fresh,
    and replayable once forgotten, for longer than the window); its id is remembered until it
    is no longer fresh.
    """

    def __init__(
        self,
        store: SeenStore,
        window_s: float = 630.0,
        *,
        future_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.store = store
        #: True unless the store says it never waits on I/O (unknown stores are assumed to).
        self.performs_io = bool(getattr(store, "performs_io", True))
        self.window_s = float(window_s)
        self.future_s = DEFAULT_CLOCK_SKEW_S if future_s is None else float(future_s)
        if self.future_s < 0:
            raise ValueError("future_s must not be negative")
        self._clock = clock

    @classmethod
    def from_settings(cls, store: SeenStore, settings: Any) -> ReplayGuard:
        """Window = queue TTL + clock skew into the past, the clock skew into the future."""
        return cls(store, settings.freshness_window_s, future_s=settings.clock_skew_s)

    def precheck(self, msg_id: bytes, timestamp: float, now: float | None = None) -> None:
        """``check`` without remembering: refuses a stale or already seen message before the
        opener decrypts it or books reassembly memory for it. Remembering waits for ``check``
        after decryption, so a copy with a genuine header and altered ciphertext cannot burn
        the id of the genuine message."""
        self._fresh(timestamp, self._clock() if now is None else now)
        if _seen(self.store, msg_id):
            raise ReplayError(f"msg_id {bytes(msg_id).hex()} was already accepted")

    def check(self, msg_id: bytes, timestamp: float, now: float | None = None) -> None:
        """ExpiredError outside the window, ReplayError for a seen id; else remember it."""
        now = self._clock() if now is None else now
        self._fresh(timestamp, now)
        ttl = timestamp + self.window_s - now + 1.0
        if not self.store.add_if_new(bytes(msg_id), ttl):
            raise ReplayError(f"msg_id {bytes(msg_id).hex()} was already accepted")

    def _fresh(self, timestamp: float, now: float) -> None:
        if not math.isfinite(timestamp):
            raise ExpiredError("message timestamp is not a finite number")
        age = now - timestamp
        if age > self.window_s:
            raise ExpiredError(f"message is {age:.1f}s old; the window is {self.window_s:.0f}s")
        if -age > self.future_s:
            raise ExpiredError(
                f"message is dated {-age:.1f}s in the future; the clock skew allowed is"
                f" {self.future_s:.0f}s"
            )


def seen_store_from_settings(
    settings: Any, namespace: str | None = None, *, role: str | None = None
) -> SeenStore:
    """Redis when PDMFED_REDIS_URL is set, else in-memory.

    With ``role`` the store uses that role's namespace (shared by its replicas) and, when
    PDMFED_REDIS_PASSWORD is set, that role's ACL user ``pdmfed-<role>``.
    """
    from federation.crypto.redis_acl import acl_user, seen_namespace

    if settings.redis_url:
        ns = namespace or seen_namespace(role or settings.service_id or "default")
        secret = getattr(settings, "redis_password", None)
        password = secret.get_secret_value() if secret is not None else None
        username = acl_user(role) if role and password is not None else None
        return RedisSeenStore(settings.redis_url, ns, username=username, password=password)
    return InMemorySeenStore()
