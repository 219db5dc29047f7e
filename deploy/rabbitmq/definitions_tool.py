"""Generate deploy/rabbitmq/definitions.json from the code; render a copy with real password hashes.

The topology (exchanges, queues, bindings, policies) and the users' permissions and topic
permissions derive from the service registry and the message contracts. After changing either:

    python deploy/rabbitmq/definitions_tool.py generate deploy/rabbitmq/definitions.json

rewrites those sections in place (users, vhosts and versions are kept); a deploy test fails
while the committed file and the code disagree.

The committed definitions.json carries hashes of public placeholder passwords (see
.env.example) and no administrator. A real deployment renders its own copy, with each
service user's password taken from the environment, and loads that copy from a secret
(Kubernetes Secret / compose secret), never from the repository:

    PDMFED_RABBITMQ_PASSWORD_CONNECTOR=... (one per user, name upper-cased, '-' -> '_')
    python deploy/rabbitmq/definitions_tool.py render deploy/rabbitmq/definitions.json > out.json

Placeholders and guessable passwords are refused. An administrator (user ``pdmfed-admin``,
tag ``administrator``, full rights on the vhost) is added only when
PDMFED_RABBITMQ_PASSWORD_ADMIN is set to a strong password. Passwords are never taken from
argv. Hashes use RabbitMQ's `rabbit_password_hashing_sha256`:
base64(salt[4] + SHA-256(salt[4] + utf8(password))).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
from typing import Any

__all__ = ["HASHING_ALGORITHM", "hash_password", "verify_password", "password_env_var", "render", "generate"]

#: The vhost the committed definitions declare.
VHOST = "pdmfed"
#: The sections :func:`generate` derives from the code.
DERIVED = ("permissions", "topic_permissions", "policies", "queues", "exchanges", "bindings")

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
    user = {"name": ADMIN_USER, "password_hash": hash_password(password),
            "hashing_algorithm": HASHING_ALGORITHM, "tags": ["administrator"], "limits": {}}
    perms = [{"user": ADMIN_USER, "vhost": v["name"], "configure": ".*", "write": ".*", "read": ".*"}
             for v in definitions.get("vhosts", [])]
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


def generate(definitions: dict[str, Any], vhost: str = VHOST) -> dict[str, Any]:
    """Copy of ``definitions`` whose topology and permissions are the code's (bus.topology,
    bus.permissions); every other section is kept as it is."""
    from federation.bus.permissions import permission_definitions
    from federation.bus.topology import as_definitions

    derived = {**permission_definitions(vhost), **as_definitions(vhost=vhost)}
    return {key: derived[key] if key in DERIVED else value for key, value in definitions.items()}


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("render", "generate"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        definitions = json.load(fh)
    if argv[0] == "generate":
        with open(argv[1], "w", encoding="utf-8") as fh:
            json.dump(generate(definitions), fh, indent=2)
            fh.write("\n")
        return 0
    from federation.errors import ConfigError

    try:
        rendered = render(definitions, dict(os.environ))
    except KeyError as exc:
        print(f"definitions_tool: {exc.args[0]}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a weak or placeholder password (named, never echoed)
        print(f"definitions_tool: {exc}", file=sys.stderr)
        return 1
    json.dump(rendered, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
