"""The stack's Redis, from the attacker's side: `pdmfed keys init` secrets, compose's command line.

A redis-server runs with the command line docker-compose.yml gives the stack's Redis and the
users.acl `pdmfed keys init` writes; each service connects with nothing but what its own
secrets directory holds (the files its container mounts as PDMFED_SECRETS_DIR). One service's credentials must not read, delete or pre-fill another
service's seen ids; the default user, no password and the health-check user get nothing more.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import redis
import yaml
from federation.cli import main as pdmfed
from federation.config import Settings
from federation.crypto.redis_acl import HEALTH_USER, acl_user
from federation.crypto.replay import seen_store_from_settings
from federation.provision import ENVELOPE_SENDERS, SERVICES
from redis_helpers import free_port, redis_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
ACL_IN_CONTAINER = "/etc/redis/users.acl"


def _host_address() -> str:
    """A non-loopback address of this host: containers reach Redis over the network, where
    redis-server's protected mode refuses everyone unless the default user has no nopass."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("198.51.100.1", 9))  # sends nothing: only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        address = socket.gethostbyname(socket.gethostname())
    if address.startswith("127."):
        pytest.skip("this host has no non-loopback IPv4 address to reach Redis over")
    return address


def _env(directory: Path) -> dict[str, str]:
    """A component's secrets as its container reads them: one file per setting (upper-cased)."""
    return {f.name.upper(): f.read_text() for f in directory.iterdir() if f.is_file()}


def _compose_redis_args() -> list[str]:
    """redis-server's arguments as docker-compose.yml starts the stack's Redis."""
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"][
        "command"
    ]
    assert command[0] == "redis-server", command
    return command[1:]


@pytest.fixture(scope="module")
def stack_redis(tmp_path_factory):
    out = tmp_path_factory.mktemp("stack") / "secrets"
    code = pdmfed(["keys", "init", "--out", str(out), "--factory", "factory-1"])
    assert code == 0
    args = [
        str(out / "redis/users.acl") if a == ACL_IN_CONTAINER else a for a in _compose_redis_args()
    ]
    assert str(out / "redis/users.acl") in args, "compose must start redis-server with --aclfile"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    # no --bind, as in the container: redis-server's default bind, where protected mode applies
    with redis_server(workdir, [*args, "--port", str(port), "--dir", str(workdir)], port):
        yield out, port


def _client(port: int, username: str | None = None, password: str | None = None) -> redis.Redis:
    """A client from elsewhere on the network, as the services in their containers are."""
    return redis.Redis(
        host=_host_address(), port=port, username=username, password=password, socket_timeout=5
    )


def _store(out: Path, port: int, role: str):
    env = _env(out / role / "secrets")
    assert env["PDMFED_REDIS_URL"] == "redis://redis:6379/0"  # as the containers reach it
    settings = Settings(
        redis_url=f"redis://{_host_address()}:{port}/0", redis_password=env["PDMFED_REDIS_PASSWORD"]
    )
    return seen_store_from_settings(settings, role=role)


def test_each_services_secrets_hold_only_its_own_redis_password(stack_redis):
    out, _ = stack_redis
    passwords = {s: _env(out / s / "secrets")["PDMFED_REDIS_PASSWORD"] for s in ENVELOPE_SENDERS}
    assert len(set(passwords.values())) == len(passwords)
    for component in [p.parent for p in out.rglob("secrets") if p.is_dir()]:
        text = "".join(f.read_text() for f in component.rglob("*") if f.is_file())
        own = component.name if component.name in passwords else None
        assert [s for s, pw in passwords.items() if pw in text and s != own] == [], component


def test_each_service_works_in_its_own_namespace_with_its_secrets(stack_redis):
    out, port = stack_redis
    for role in ENVELOPE_SENDERS:
        store = _store(out, port, role)
        msg_id = os.urandom(16)
        assert not store.seen(msg_id)
        assert store.add_if_new(msg_id, 30) and not store.add_if_new(msg_id, 30)


@pytest.mark.parametrize("attacker", [s for s in SERVICES if s != "security"])
def test_when_a_service_uses_its_credentials_against_another_services_seen_ids__redis_refuses(
    stack_redis, attacker
):
    out, port = stack_redis
    victim = _store(out, port, "security")
    seen = os.urandom(16)
    assert victim.add_if_new(seen, 60)
    client = _client(
        port, acl_user(attacker), _env(out / attacker / "secrets")["PDMFED_REDIS_PASSWORD"]
    )
    key = f"pdmfed:seen:security:{seen.hex()}"
    attempts = {
        "delete the victim's id (re-opens replay)": lambda: client.delete(key),
        "read it": lambda: client.get(key),
        "overwrite it with a short expiry": lambda: client.set(key, b"1", px=1),
        "pre-fill the victim's namespace": lambda: client.set(
            f"pdmfed:seen:security:{os.urandom(16).hex()}", b"1"
        ),
        "list keys": lambda: client.keys("*"),
        "flush everything": lambda: client.flushall(),
        "rewrite the ACL": lambda: client.acl_setuser(acl_user(attacker), keys=["*"]),
    }
    allowed = []
    for what, attempt in attempts.items():
        try:
            attempt()
            allowed.append(what)
        except redis.exceptions.NoPermissionError:
            pass
    assert allowed == []
    assert not victim.add_if_new(seen, 60), "the victim's seen id was lost"


def test_when_a_client_has_no_password_or_is_the_default_user__redis_refuses_it(stack_redis):
    _, port = stack_redis
    with pytest.raises(redis.exceptions.AuthenticationError):
        _client(port).set("pdmfed:seen:security:00", b"1")
    with pytest.raises(redis.exceptions.AuthenticationError):
        _client(port).get("pdmfed:seen:security:00")
    with pytest.raises(redis.exceptions.AuthenticationError):
        _client(port, "default", "").ping()


def test_the_health_check_user_may_only_ping(stack_redis):
    out, port = stack_redis
    env = _env(out / "redis" / "secrets")
    assert set(env) == {"REDISCLI_AUTH"}  # all the Redis container gets: its health password
    health = _client(port, HEALTH_USER, env["REDISCLI_AUTH"])
    assert health.ping()
    for attempt in (
        lambda: health.get("pdmfed:seen:security:00"),
        lambda: health.set("x", b"1"),
        lambda: health.keys("*"),
        lambda: health.delete("pdmfed:seen:security:00"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
