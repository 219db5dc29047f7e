"""The public keys a service trusts and its senders' roles: required at start, logged, reloaded on SIGHUP."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from federation.crypto.signing import TrustStore
from federation.errors import ConfigError
from federation.runtime.roles import SenderRoles, read_sender_roles, without_role

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
    raise ConfigError(
        f"no factory public keys in {shown}: the security service checks every "
        "update's factory signature (add <datasite_id>.pub files, e.g. from `pdmfed keys init`)"
    )


@dataclass
class TrustedKeys:
    """A service's trust stores and sender roles, and where they come from; ``reload()`` re-reads
    them in place."""

    keys_dir: Path | None
    senders: TrustStore | None
    factories: TrustStore | None = None
    #: Sender id -> role (senders.json in ``keys_dir`` and ``roles_setting``), reloaded with
    #: the keys; None where no roles are configured (the demo's own map is fixed).
    roles: SenderRoles | None = None
    #: PDMFED_SENDER_ROLES as the service read it at start (the environment does not change).
    roles_setting: str | None = None

    def describe(self) -> str:
        """`senders: a, b; factories: c, d` (names only)."""
        parts = []
        if self.senders is not None:
            parts.append("senders: " + ", ".join(self.senders.senders))
        if self.factories is not None:
            parts.append("factories: " + ", ".join(self.factories.senders))
        return "; ".join(parts) or "no keys"

    def reload(self) -> None:
        """Re-read the keys directory and sender roles into the same objects (their users see
        the change at once), and log what changed.

        A directory or roles file that cannot be read, or that lost every factory key, leaves
        everything as it was and logs why: a reload never turns signature checks off. A trusted
        sender left without a role is logged; its messages are refused as ``forbidden``.
        """
        if self.keys_dir is None:
            log.warning("SIGHUP: no PDMFED_KEYS_DIR, nothing to reload")
            return
        try:
            senders = TrustStore.from_dir(self.keys_dir) if self.senders is not None else None
            factories = (
                load_factory_trust(self.keys_dir, demo=False)
                if self.factories is not None
                else None
            )
            roles = (
                read_sender_roles(self.keys_dir, self.roles_setting)
                if self.roles is not None
                else None
            )
        except ConfigError as exc:
            log.error("SIGHUP: kept the trusted public keys and sender roles as they were: %s", exc)
            return
        changed = []
        if senders is not None and self.senders is not None:
            changed += _key_changes("sender key", self.senders, senders)
            self.senders.replace_with(senders)
        if factories is not None and self.factories is not None:
            changed += _key_changes("factory key", self.factories, factories)
            self.factories.replace_with(factories)
        if roles is not None and self.roles is not None:
            changed += [
                f"{c[0]}role {c[1:]}" if c[0] in "+-" else f"role {c}"
                for c in self.roles.changes(roles)
            ]
            self.roles.replace_with(roles)
        log.info("reloaded trusted public keys from %s (%s)", self.keys_dir, self.describe())
        log.info("SIGHUP changed: %s", "; ".join(changed) if changed else "nothing")
        if self.roles is not None and self.senders is not None:
            orphans = without_role(self.roles, self.senders.senders)
            if orphans:
                log.error(
                    "trusted sender(s) %s have no role: their messages are refused as forbidden"
                    " (add them to senders.json or PDMFED_SENDER_ROLES)",
                    ", ".join(orphans),
                )


def _key_changes(what: str, old: TrustStore, new: TrustStore) -> list[str]:
    before, after = set(old.senders), set(new.senders)
    return [f"+{what} {s}" for s in sorted(after - before)] + [
        f"-{what} {s}" for s in sorted(before - after)
    ]
