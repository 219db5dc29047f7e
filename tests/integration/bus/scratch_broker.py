"""A scratch RabbitMQ vhost with one least-privilege user per role, made and removed by rabbitmqctl."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from bus_helpers import AMQP_URL
from federation.bus.permissions import ROLES, broker_user, permission_definitions
from federation.bus.topology import DEFAULT_TOPOLOGY, as_definitions

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "deploy" / "rabbitmq"))
import definitions_tool  # noqa: E402


def rabbitmqctl() -> str | None:
    """The rabbitmqctl binary, if this machine can administer the broker."""
    return shutil.which("rabbitmqctl")


def _ctl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [rabbitmqctl(), "-q", *args],
        input=stdin,
        capture_output=True,
        text=True,  # noqa: S603
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {args[0]} failed: {done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


@dataclass
class ScratchBroker:
    """vhost ``pdmfed-perm-<hex>`` holding the real topology names, users ``pdmfedtest<hex>-<role>``."""

    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def vhost(self) -> str:
        return f"pdmfed-perm-{self.tag}"

    @property
    def user_prefix(self) -> str:
        return f"pdmfedtest{self.tag}"

    def definitions(self) -> dict:
        """What the broker imports: the deployment's topology and permissions, in this vhost."""
        admin = urlsplit(AMQP_URL).username or "guest"
        self.passwords = {role: secrets.token_urlsafe(24) for role in ROLES}
        users = [
            {
                "name": broker_user(role, self.user_prefix),
                "tags": [],
                "limits": {},
                "password_hash": definitions_tool.hash_password(pw),
                "hashing_algorithm": definitions_tool.HASHING_ALGORITHM,
            }
            for role, pw in self.passwords.items()
        ]
        granted = permission_definitions(self.vhost, DEFAULT_TOPOLOGY, user_prefix=self.user_prefix)
        # the test's own administrator: to look at queues and to clean up
        granted["permissions"].append(
            {"user": admin, "vhost": self.vhost, "configure": ".*", "write": ".*", "read": ".*"}
        )
        return {
            "users": users,
            "vhosts": [{"name": self.vhost}],
            **granted,
            **as_definitions(DEFAULT_TOPOLOGY, vhost=self.vhost),
        }

    def create(self) -> ScratchBroker:
        # on stdin: the broker's own user could not read a private temporary file
        _ctl("import_definitions", "--format", "json", stdin=json.dumps(self.definitions()))
        return self

    def remove(self) -> None:
        for role in ROLES:
            try:
                _ctl("delete_user", broker_user(role, self.user_prefix))
            except RuntimeError:
                pass
        _ctl("delete_vhost", self.vhost)

    def url(self, role: str | None = None) -> str:
        """``role``'s AMQP URL on the scratch vhost (None: the test's administrator)."""
        parts = urlsplit(AMQP_URL)
        host = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}"
        vhost = quote(self.vhost, safe="")
        if role is None:
            return f"amqp://{parts.username or 'guest'}:{parts.password or 'guest'}@{host}/{vhost}"
        user = quote(broker_user(role, self.user_prefix), safe="")
        return f"amqp://{user}:{quote(self.passwords[role], safe='')}@{host}/{vhost}"
