"""PySyft's process-wide API registry, written by logins while code requests iterate it: a
connector serving several datasites from threads must not fail a round on the race."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

syft = pytest.importorskip("syft")

from federation.communication.syft_login import GuardedRegistry, guard_api_registry  # noqa: E402
from syft.client.api import APIRegistry  # noqa: E402
from syft.service.policy.policy import partition_by_server  # noqa: E402
from syft.service.user.user import SyftSigningKey  # noqa: E402
from syft.types.uid import UID  # noqa: E402


@pytest.fixture
def registry():
    """PySyft's registry as this process has it, put back (without the test's entries) after."""
    saved = APIRegistry.__dict__["__api_registry__"]
    snapshot = dict(saved)
    yield
    APIRegistry.__api_registry__ = saved
    for key in [k for k in saved if k not in snapshot]:
        del saved[key]


def _slow_api() -> SimpleNamespace:
    """An API whose datasite never holds the object and answers after a network-like pause."""

    def exists(uid):
        time.sleep(0.0005)
        return False

    return SimpleNamespace(services=SimpleNamespace(action=SimpleNamespace(exists=exists)))


def _race(seconds: float) -> list[BaseException]:
    """Code requests' input lookup in one thread while logins register APIs in another; the
    errors other than 'not on any datasite' (what an unknown UID must raise)."""
    for _ in range(50):
        APIRegistry.set_api_for(UID(), SyftSigningKey.generate().verify_key, _slow_api())
    stop, errors = threading.Event(), []

    def logins() -> None:
        while not stop.is_set():
            APIRegistry.set_api_for(UID(), SyftSigningKey.generate().verify_key, _slow_api())
            time.sleep(0.001)

    def code_requests() -> None:
        while not stop.is_set():
            try:
                partition_by_server({"features": UID()})
            except Exception as exc:  # noqa: BLE001 - sorted below
                if "does not belong to any Datasite" not in str(exc):
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=logins), threading.Thread(target=code_requests)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return errors


def test_when_logins_race_code_requests__the_guarded_registry_never_fails_the_request(registry):
    guard_api_registry()
    assert isinstance(APIRegistry.__dict__["__api_registry__"], GuardedRegistry)
    assert _race(2.0) == []


def test_when_the_registry_is_guarded__it_keeps_every_login_and_is_swapped_once(registry):
    key = (UID(), SyftSigningKey.generate().verify_key)
    APIRegistry.set_api_for(*key, api="before")
    guard_api_registry()
    guarded = APIRegistry.__dict__["__api_registry__"]
    guard_api_registry()
    assert APIRegistry.__dict__["__api_registry__"] is guarded
    assert APIRegistry.api_for(*key).unwrap() == "before"
    assert APIRegistry.get_by_recent_server_uid(key[0]) == "before"
