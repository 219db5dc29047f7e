"""PySyft logins that many threads of one process may make at once (the API registry guarded)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["GuardedRegistry", "guard_api_registry", "login"]

_INSTALL_LOCK = threading.Lock()


class GuardedRegistry(OrderedDict):
    """PySyft 0.9's process-wide API registry with writes under one lock and iteration over a
    snapshot taken under it.

    Every login (and every ``client.refresh()``) writes the registry while PySyft's lookups
    iterate it (``ExactMatch`` built from bare inputs did): a connector serving several
    datasites from threads saw ``RuntimeError: OrderedDict mutated during iteration`` fail a
    datasite's round.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._lock:
            super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        with self._lock:
            super().__delitem__(key)

    def __iter__(self) -> Any:
        with self._lock:
            return iter(list(super().__iter__()))

    def __reversed__(self) -> Any:
        with self._lock:
            return iter(list(super().__reversed__()))

    def keys(self) -> Any:
        with self._lock:
            return list(super().keys())

    def values(self) -> Any:
        with self._lock:
            return list(super().values())

    def items(self) -> Any:
        with self._lock:
            return list(super().items())

    def pop(self, key: Any, *default: Any) -> Any:
        with self._lock:
            return super().pop(key, *default)

    def clear(self) -> None:
        with self._lock:
            super().clear()


def guard_api_registry() -> None:
    """Swap PySyft's API registry for a GuardedRegistry holding its entries (once per process)."""
    from syft.client.api import APIRegistry

    with _INSTALL_LOCK:
        current = APIRegistry.__dict__["__api_registry__"]
        if not isinstance(current, GuardedRegistry):
            APIRegistry.__api_registry__ = GuardedRegistry(current)


def login(url: str, email: str, password: str, *, cache: bool = False) -> Any:
    """``sy.login`` with the API registry guarded first, so other threads may log in or build
    code requests meanwhile."""
    import syft as sy

    guard_api_registry()
    return sy.login(url=url, email=email, password=password, cache=cache)
