"""The shared replay store requires auth: one confined Redis user per role, TLS when rediss://.

Each test starts its own redis-server on a free port with the ACL file a deployment renders
(`render_acl_file`); the shared Redis on 6379 has no auth and is not used here.
"""

from __future__ import annotations

import os

import pytest
import redis
from federation.config import Settings
from federation.crypto.redis_acl import acl_user
from federation.crypto.replay import seen_store_from_settings
from redis_helpers import acl_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with acl_redis(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


def _as(server, role: str) -> redis.Redis:
    return redis.Redis(
        host=server.host,
        port=server.port,
        username=acl_user(role),
        password=server.passwords[role],
        socket_timeout=5,
    )


def _store(server, role: str):
    return seen_store_from_settings(
        Settings(redis_url=server.url, redis_password=server.passwords[role]), role=role
    )


def test_when_a_service_has_its_credentials__its_seen_ids_work_in_its_own_namespace(server):
    store = _store(server, "security")
    msg_id = os.urandom(16)
    assert not store.seen(msg_id)  # the opener's read-only check before decryption (GET)
    assert store.add_if_new(msg_id, 30) and not store.add_if_new(msg_id, 30)
    assert store.seen(msg_id)
    assert store.namespace == "pdmfed:seen:security"
    assert _as(server, "security").get(f"pdmfed:seen:security:{msg_id.hex()}") == b"1"


def test_when_a_compromised_connector_attacks_the_security_services_seen_ids__redis_refuses(server):
    victim = _store(server, "security")
    seen = os.urandom(16)
    assert victim.add_if_new(seen, 60)
    attacker = _as(server, "connector")
    key = f"pdmfed:seen:security:{seen.hex()}"
    attempts = {
        "delete the victim's id (re-opens replay)": lambda: attacker.delete(key),
        "expire it": lambda: attacker.pexpire(key, 1),
        "pre-fill the victim's namespace (drops future messages)": lambda: attacker.set(
            f"pdmfed:seen:security:{os.urandom(16).hex()}", b"1"
        ),
        "read it": lambda: attacker.get(key),
        "list keys": lambda: attacker.keys("*"),
        "scan keys": lambda: attacker.scan(0),
        "flush everything": lambda: attacker.flushall(),
        "read the config": lambda: attacker.config_get("*"),
        "list ACL users": lambda: attacker.acl_list(),
        "run a script": lambda: attacker.eval("return redis.call('DEL', KEYS[1])", 1, key),
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


def test_when_a_client_has_no_or_wrong_credentials__redis_refuses_it(server):
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=server.host, port=server.port, socket_timeout=5).set(
            "pdmfed:seen:x:1", b"1"
        )
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(
            host=server.host,
            port=server.port,
            username=acl_user("security"),
            password=server.passwords["connector"],
            socket_timeout=5,
        ).ping()


def test_when_the_url_is_rediss__the_store_speaks_tls_to_a_server_of_the_deployments_ca(tmp_path):
    with acl_redis(tmp_path, tls=True) as tls_server:
        assert tls_server.url.startswith("rediss://")
        store = _store(tls_server, "aggregator")
        msg_id = os.urandom(16)
        assert store.add_if_new(msg_id, 30) and not store.add_if_new(msg_id, 30)
        plain = redis.Redis(
            host=tls_server.host,
            port=tls_server.port,
            username=acl_user("aggregator"),
            password=tls_server.passwords["aggregator"],
            socket_timeout=3,
        )
        with pytest.raises(redis.exceptions.ConnectionError):  # no plaintext on the TLS port
            plain.ping()
