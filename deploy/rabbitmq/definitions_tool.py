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

import json
import os
import sys
from typing import Any

from federation.bus.definitions import (  # noqa: F401 - the tool's API, one implementation
    ADMIN_USER,
    HASHING_ALGORITHM,
    hash_password,
    password_env_var,
    render,
    verify_password,
)

__all__ = [
    "HASHING_ALGORITHM",
    "hash_password",
    "verify_password",
    "password_env_var",
    "render",
    "generate",
]

#: The vhost the committed definitions declare.
VHOST = "pdmfed"
#: The sections :func:`generate` derives from the code.
DERIVED = ("permissions", "topic_permissions", "policies", "queues", "exchanges", "bindings")


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
