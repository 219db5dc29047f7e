"""Sender id -> role: explicit configuration, checked against every trusted key at start."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from federation.errors import ConfigError, ForbiddenError
from federation.wire.contracts import ENVELOPE_ROLES, Role, may_send

__all__ = [
    "ROLES_FILE",
    "SenderRoles",
    "parse_sender_roles",
    "read_sender_roles",
    "load_sender_roles",
    "write_roles_file",
]

#: In PDMFED_KEYS_DIR, next to the trusted public keys: which role each sender id has.
ROLES_FILE = "senders.json"


class SenderRoles(Mapping[str, Role]):
    """Each sender id's one role; ``authorize(envelope)`` refuses what that role may not send."""

    def __init__(self, roles: Mapping[str, str]) -> None:
        self._roles: dict[str, Role] = {}
        for sender, role in roles.items():
            if role not in ENVELOPE_ROLES:
                known = ", ".join(ENVELOPE_ROLES)
                raise ConfigError(f"sender {sender!r} has role {role!r}; roles are {known}")
            self._roles[sender] = Role(role)

    def __getitem__(self, sender: str) -> Role:
        return self._roles[sender]

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def replace_with(self, other: SenderRoles) -> None:
        """Take ``other``'s map in place: endpoints holding this object see it at once."""
        self._roles = dict(other._roles)

    def changes(self, other: SenderRoles) -> list[str]:
        """What taking ``other`` changes: ``+connector-2=connector``, ``-old``, ``x: a -> b``."""
        out = [f"+{s}={r}" for s, r in sorted(other.items()) if s not in self._roles]
        out += [f"-{s}" for s in sorted(self._roles) if s not in other]
        out += [
            f"{s}: {self._roles[s]} -> {r}"
            for s, r in sorted(other.items())
            if s in self._roles and self._roles[s] != r
        ]
        return out

    def authorize(self, envelope: Any) -> None:
        """ForbiddenError unless the envelope's (verified) sender's role may send its type."""
        role = self._roles.get(envelope.sender)
        if role is None:
            raise ForbiddenError(f"sender {envelope.sender!r} has no role here")
        if not may_send(role, envelope.msg_type):
            raise ForbiddenError(
                f"sender {envelope.sender!r} (role {role}) may not send {envelope.msg_type}"
            )

    @classmethod
    def of_roles(cls, roles: Iterable[str]) -> SenderRoles:
        """Each role's own sender id (the demo and embedded runs, which create those keys)."""
        return cls({str(role): str(role) for role in roles})


def parse_sender_roles(text: str | None) -> dict[str, str]:
    """``PDMFED_SENDER_ROLES``: ``connector-1=connector,connector-2=connector``."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        sender, sep, role = item.partition("=")
        if not sep or not sender.strip() or not role.strip():
            raise ConfigError(f"PDMFED_SENDER_ROLES entry {item.strip()!r} is not sender=role")
        _add(out, sender.strip(), role.strip(), "PDMFED_SENDER_ROLES")
    return out


def _add(out: dict[str, str], sender: str, role: str, where: str) -> None:
    if out.get(sender, role) != role:
        raise ConfigError(f"sender {sender!r} has two roles ({out[sender]}, {role}) in {where}")
    out[sender] = role


def _read_file(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        senders = data["senders"]
        if not isinstance(senders, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in senders.items()
        ):
            raise TypeError("senders must map sender id -> role")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a sender roles file: {exc}") from exc
    return dict(senders)


def load_sender_roles(
    keys_dir: Path | None, setting: str | None, trusted: Iterable[str] = ()
) -> SenderRoles:
    """The roles from ``keys_dir/senders.json`` and ``PDMFED_SENDER_ROLES`` together.

    ConfigError (the service does not start) when neither names any sender, when one sender
    gets two roles, or when a sender whose public key is trusted has no role.
    """
    roles = read_sender_roles(keys_dir, setting)
    missing = without_role(roles, trusted)
    if missing:
        raise ConfigError(
            f"trusted sender(s) {', '.join(missing)} have no role (add them to "
            f"{ROLES_FILE} or PDMFED_SENDER_ROLES)"
        )
    return roles


def without_role(roles: Mapping[str, Any], trusted: Iterable[str]) -> list[str]:
    """The trusted senders ``roles`` gives no role (their messages are refused as forbidden)."""
    return sorted(set(trusted) - set(roles))


def read_sender_roles(keys_dir: Path | None, setting: str | None) -> SenderRoles:
    """``keys_dir/senders.json`` and ``PDMFED_SENDER_ROLES`` together (ConfigError when neither
    names any sender, a sender gets two roles or a role is unknown)."""
    roles: dict[str, str] = {}
    path = Path(keys_dir) / ROLES_FILE if keys_dir is not None else None
    if path is not None and path.exists():
        roles.update(_read_file(path))
    for sender, role in parse_sender_roles(setting).items():
        _add(roles, sender, role, f"{path} and PDMFED_SENDER_ROLES")
    if not roles:
        shown = path if path is not None else f"$PDMFED_KEYS_DIR/{ROLES_FILE}"
        raise ConfigError(
            f"no sender roles: {shown} (from `pdmfed keys init`) or PDMFED_SENDER_ROLES must say"
            " which role each trusted sender has"
        )
    return SenderRoles(roles)


def write_roles_file(keys_dir: Path, roles: Mapping[str, str]) -> Path:
    """Write ``keys_dir/senders.json`` (no secret in it)."""
    path = Path(keys_dir) / ROLES_FILE
    path.write_text(json.dumps({"senders": dict(sorted(roles.items()))}, indent=2) + "\n")
    return path
