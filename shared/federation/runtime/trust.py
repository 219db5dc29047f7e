"""The public keys a service trusts: required at start, logged by name, reloaded on SIGHUP."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from federation.crypto.signing import TrustStore
from federation.errors import ConfigError

__all__ = ["FACTORIES_DIR", "TrustedKeys", "load_factory_trust"]

log = logging.getLogger(__name__)

#: Sub-directory of PDMFED_KEYS_DIR with the factories' public keys (<datasite_id>.pub).
FACTORIES_DIR = "factories"


def load_factory_trust(keys_dir: Path | None, *, demo: bool) -> TrustStore | None:
    """The factories' public keys; outside the demo, ConfigError when there are none.

    Without them the security service could not check factory signatures, so it does not run
    at all (in the demo, keys the demo writes itself are passed in directly).
    """
    where = Path(keys_dir) / FACTORIES_DIR if keys_dir is not None else None
    if where is not None and where.is_dir():
        trust = TrustStore.from_dir(where)
        if len(trust):
            return trust
    if demo:
        return None
    shown = where if where is not None else f"$PDMFED_KEYS_DIR/{FACTORIES_DIR}"
    raise ConfigError(f"no factory public keys in {shown}: the security service checks every "
                      "update's factory signature (add <datasite_id>.pub files, e.g. from `pdmfed keys init`)")


@dataclass
class TrustedKeys:
    """A service's trust stores and where they come from; ``reload()`` re-reads them in place."""

    keys_dir: Path | None
    senders: TrustStore | None
    factories: TrustStore | None = None

    def describe(self) -> str:
        """`senders: a, b; factories: c, d` (names only)."""
        parts = []
        if self.senders is not None:
            parts.append("senders: " + ", ".join(self.senders.senders))
        if self.factories is not None:
            parts.append("factories: " + ", ".join(self.factories.senders))
        return "; ".join(parts) or "no keys"

    def reload(self) -> None:
        """Re-read the keys directory into the same stores (their users see the change at once).

        A directory that cannot be read, or that lost every factory key, leaves the stores as
        they were and logs why: a reload never turns signature checks off.
        """
        if self.keys_dir is None:
            log.warning("SIGHUP: no PDMFED_KEYS_DIR, nothing to reload")
            return
        try:
            senders = TrustStore.from_dir(self.keys_dir) if self.senders is not None else None
            factories = (load_factory_trust(self.keys_dir, demo=False)
                         if self.factories is not None else None)
        except ConfigError as exc:
            log.error("SIGHUP: kept the trusted public keys as they were: %s", exc)
            return
        if senders is not None and self.senders is not None:
            self.senders.replace_with(senders)
        if factories is not None and self.factories is not None:
            self.factories.replace_with(factories)
        log.info("reloaded trusted public keys from %s (%s)", self.keys_dir, self.describe())
