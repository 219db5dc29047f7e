"""RabbitMQ definitions with real password hashes: each broker user's from its own password."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

__all__ = [
    "ADMIN_USER",
    "HASHING_ALGORITHM",
    "hash_password",
    "verify_password",
    "password_env_var",
    "render",
]

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
_SALT_BYTES = 4
ADMIN_USER = "pdmfed-admin"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Return the RabbitMQ sha256 password hash (base64) of ``password``."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    if len(salt) != _SALT_BYTES:
        raise ValueError(f"salt must be {_SALT_BYTES} bytes, got {len(salt)}")
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    """True when ``password_hash`` (RabbitMQ sha256 format) is the hash of ``password``."""
    raw = base64.b64decode(password_hash, validate=True)
    if len(raw) != _SALT_BYTES + hashlib.sha256().digest_size:
        return False
    expected = hash_password(password, raw[:_SALT_BYTES])
    return hmac.compare_digest(expected, password_hash)


def password_env_var(user: str) -> str:
    """Environment variable holding ``user``'s password, e.g. PDMFED_RABBITMQ_PASSWORD_CONNECTOR."""
    suffix = user.removeprefix("pdmfed-").upper().replace("-", "_")
    return f"PDMFED_RABBITMQ_PASSWORD_{suffix}"


def _admin(definitions: dict[str, Any], password: str) -> tuple[dict[str, Any], list[dict]]:
    user = {
        "name": ADMIN_USER,
        "password_hash": hash_password(password),
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": ["administrator"],
        "limits": {},
    }
    perms = [
        {"user": ADMIN_USER, "vhost": v["name"], "configure": ".*", "write": ".*", "read": ".*"}
        for v in definitions.get("vhosts", [])
    ]
    return user, perms


def render(definitions: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Copy of ``definitions`` with every user's hash recomputed from ``env``; all must be set.

    Every password must be a real secret (no placeholder, not guessable); an administrator is
    added only when PDMFED_RABBITMQ_PASSWORD_ADMIN is set.
    """
    from federation.crypto.strength import check_secret

    users = [u for u in definitions.get("users", []) if u["name"] != ADMIN_USER]
    missing = [password_env_var(u["name"]) for u in users]
    missing = [name for name in missing if not env.get(name)]
    if missing:
        raise KeyError("missing password environment variables: " + ", ".join(missing))
    out = json.loads(json.dumps(definitions))
    out["users"] = [u for u in out.get("users", []) if u["name"] != ADMIN_USER]
    out["permissions"] = [p for p in out.get("permissions", []) if p["user"] != ADMIN_USER]
    for user in out["users"]:
        var = password_env_var(user["name"])
        user["password_hash"] = hash_password(check_secret(env[var], var))
        user["hashing_algorithm"] = HASHING_ALGORITHM
    admin_var = password_env_var(ADMIN_USER)
    if env.get(admin_var):
        user, perms = _admin(out, check_secret(env[admin_var], admin_var))
        out["users"].append(user)
        out["permissions"].extend(perms)
    return out
