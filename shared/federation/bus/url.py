"""An AMQP URL checked before use, and connecting to it: bounded retries, errors a person can act on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from federation.errors import BusError, ConfigError

__all__ = ["AmqpTarget", "parse_amqp_url", "connect_with_retry", "connect_error"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMES = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class AmqpTarget:
    """Where an AMQP URL points (never its password)."""

    scheme: str
    host: str
    port: int
    vhost: str
    user: str

    @property
    def where(self) -> str:
        """``host:port`` as people say it."""
        return f"{self.host}:{self.port}"


def parse_amqp_url(url: str, name: str = "PDMFED_AMQP_URL") -> AmqpTarget:
    """The target of an ``amqp://`` / ``amqps://`` URL; a ConfigError naming ``name`` otherwise.

    The URL itself is never echoed (it may hold a password).
    """
    text = (url or "").strip()
    if "://" not in text:
        raise ConfigError(f"{name} has no scheme: expected amqp://user:password@host:5672/vhost")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(f"{name} has scheme '{scheme}://': RabbitMQ needs amqp:// or amqps://")
    try:
        port = parts.port or _SCHEMES[scheme]
    except ValueError as exc:
        raise ConfigError(f"{name} has an invalid port: {exc}") from exc
    if not parts.hostname:
        raise ConfigError(f"{name} has no host: expected amqp://user:password@host:5672/vhost")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return AmqpTarget(scheme, parts.hostname, port, vhost, unquote(parts.username or "guest"))


def connect_error(exc: BaseException, target: AmqpTarget) -> tuple[bool, str]:
    """(worth retrying?, what went wrong in words) for a failed connection attempt."""
    import aiormq

    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return (
            False,
            f"RabbitMQ at {target.where} refused the login of user '{target.user}' (wrong user or password)",
        )
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        # the broker closes the connection instead of opening it: the vhost does not exist, or
        # this user has no permission on it
        return False, (
            f"RabbitMQ at {target.where} refused vhost '{target.vhost}' for user '{target.user}' "
            "(wrong vhost, or no permission on it)"
        )
    errno = (
        exc.args[0] if isinstance(exc, aiormq.exceptions.AMQPConnectionError) and exc.args else None
    )
    if isinstance(exc, OSError) and errno is None:
        errno = exc.errno
    if errno in (-2, -3, -5):  # EAI_NONAME, EAI_AGAIN, EAI_NODATA
        return True, f"cannot resolve the host name '{target.host}' (name lookup failed)"
    if errno == 111:
        return True, f"RabbitMQ at {target.where} refused the connection (is it running?)"
    if isinstance(exc, TimeoutError):
        return True, f"RabbitMQ at {target.where} did not answer in time"
    if isinstance(exc, aiormq.exceptions.AMQPConnectionError | OSError | ConnectionError):
        return (
            True,
            f"cannot reach RabbitMQ at {target.where} ({type(exc).__name__}: {errno or exc})",
        )
    return False, f"cannot connect to RabbitMQ at {target.where}: {type(exc).__name__}"


async def connect_with_retry(
    connect: Callable[[], Awaitable[T]],
    target: AmqpTarget,
    *,
    give_up_after_s: float = 60.0,
    first_delay_s: float = 0.5,
    max_delay_s: float = 8.0,
    attempt_timeout_s: float = 15.0,
) -> T:
    """``connect()`` with exponential backoff while the broker is unreachable, for a bounded time.

    A refusal that waiting cannot fix (login, vhost) fails at once with a ConfigError; an
    unreachable broker is retried until ``give_up_after_s`` has passed, then a BusError. Both
    name host and port.
    """
    started = time.monotonic()
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return await asyncio.wait_for(connect(), attempt_timeout_s)
        except Exception as exc:  # classified below; nothing is swallowed
            retry, why = connect_error(exc, target)
            waited = time.monotonic() - started
            if not retry:  # login or vhost refused: configuration, not a transient failure
                raise ConfigError(why) from exc
            if waited + delay > give_up_after_s:
                raise BusError(
                    f"{why}; gave up after {attempt} attempts in {waited:.0f} s"
                ) from exc
            log.warning("%s; retrying in %.1f s", why, delay)
            await asyncio.sleep(delay)
            delay = min(max_delay_s, delay * 2)
