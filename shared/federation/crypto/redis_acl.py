"""Redis ACL for the shared replay stores: one user per role, confined to its own seen-id keys.

Each role's replicas share one Redis user and one key namespace; the user may only
``SET``/``GET`` keys of that namespace, so a compromised service cannot delete or pre-fill
another service's seen ids (which would re-open replay), flush the store or read its
configuration. A health-check user may only ``PING``. The file holds SHA-256 hashes of the
passwords, never the passwords.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from federation.crypto.strength import check_secret
from federation.roles import ENVELOPE_ROLES

__all__ = ["HEALTH_USER", "REDIS_ROLES", "acl_user", "render_acl_file", "seen_namespace"]

#: Roles that open envelopes and so keep seen message ids.
REDIS_ROLES = tuple(r.value for r in ENVELOPE_ROLES)
#: What a seen-id store sends: AUTH/HELLO (always allowed), SELECT for a non-zero database,
#: PING for health checks, SET NX PX for add_if_new, GET for seen() (the opener's read-only
#: replay check before decryption) and for operators' debugging. (The client's CLIENT SETINFO
#: handshake is refused and ignored by redis-py.)
_COMMANDS = "-@all +ping +set +get +select"
#: The Redis server's own health check (compose healthcheck, k8s probes): PING and nothing else.
HEALTH_USER = "pdmfed-health"


def seen_namespace(role: str) -> str:
    """Key prefix of ``role``'s seen message ids (shared by its replicas)."""
    return f"pdmfed:seen:{role}"


def acl_user(role: str) -> str:
    """Redis user name of ``role``."""
    return f"pdmfed-{role}"


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def _rule(role: str, password: str) -> str:
    return (
        f"user {acl_user(role)} on #{_digest(password)} resetkeys ~{seen_namespace(role)}:* "
        f"resetchannels {_COMMANDS}"
    )


def render_acl_file(passwords: Mapping[str, str], health_password: str | None = None) -> str:
    """An ``aclfile`` for redis-server: the default user off, one confined user per role, and
    with ``health_password`` the PING-only user ``pdmfed-health``."""
    # off and without `nopass`: with nopass, redis-server's protected mode (default bind) refuses
    # every non-loopback client, however it authenticates
    lines = ["user default off resetpass resetkeys resetchannels -@all"]
    for role, password in sorted(passwords.items()):
        if role not in REDIS_ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {REDIS_ROLES}")
        lines.append(_rule(role, check_secret(password, f"Redis password of {role}")))
    if health_password is not None:
        digest = _digest(check_secret(health_password, "Redis health-check password"))
        lines.append(f"user {HEALTH_USER} on #{digest} resetkeys resetchannels -@all +ping")
    return "\n".join(lines) + "\n"
