"""deploy/rabbitmq: definitions.json topology (derived from the message contracts), least-privilege users, hashes."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import secrets

import pytest
import yaml
from deploy_helpers import DEPLOY, ROOT, SERVICE_QUEUES, SERVICES
from federation.errors import ConfigError
from federation.wire.messages import MsgType

RABBIT = DEPLOY / "rabbitmq"
VHOST = "pdmfed"
DEFINITIONS = json.loads((RABBIT / "definitions.json").read_text())
_spec = importlib.util.spec_from_file_location("definitions_tool", RABBIT / "definitions_tool.py")
definitions_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(definitions_tool)

#: Every routing key: the message types of the wire module.
MESSAGE_TYPES = {t.value for t in MsgType}


def _by_name(kind: str) -> dict[str, dict]:
    return {item["name"]: item for item in DEFINITIONS[kind]}


def _permissions() -> dict[str, dict]:
    return {p["user"]: p for p in DEFINITIONS["permissions"]}


def _matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def _env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_exchanges_are_the_durable_topic_exchange_and_its_dead_letter_exchange():
    exchanges = _by_name("exchanges")
    assert exchanges["pdmfed"]["type"] == "topic" and exchanges["pdmfed"]["durable"]
    assert exchanges["pdmfed.dlx"]["durable"]
    dead = [b for b in DEFINITIONS["bindings"] if b["source"] == "pdmfed.dlx"]
    assert [b["destination"] for b in dead] == ["pdmfed.dead"]


def test_each_service_queue_is_quorum_with_delivery_limit_dead_lettering_and_ttl():
    queues = _by_name("queues")
    for queue in SERVICE_QUEUES.values():
        args = queues[queue]["arguments"]
        assert queues[queue]["durable"] and not queues[queue]["auto_delete"]
        assert args["x-queue-type"] == "quorum"
        assert args["x-dead-letter-exchange"] == "pdmfed.dlx"
        assert args["x-dead-letter-routing-key"].startswith("dead.")
        assert args["x-delivery-limit"] >= 1
        assert args["x-message-ttl"] == 600_000


def test_every_message_type_reaches_a_queue_and_bindings_use_known_types():
    keys = {b["routing_key"] for b in DEFINITIONS["bindings"] if b["source"] == "pdmfed"}
    # Every type is bound to a durable queue, so mandatory publishes are always routable.
    assert keys == MESSAGE_TYPES


def test_the_dead_letter_queue_is_bounded_by_a_policy_that_matches_only_it():
    (policy,) = DEFINITIONS["policies"]
    assert _matches(policy["pattern"], "pdmfed.dead")
    for queue in SERVICE_QUEUES.values():
        assert not _matches(policy["pattern"], queue)
    assert policy["definition"]["max-length"] > 0
    # Refused bodies are parked there at the size an attacker chose: bytes are bounded too.
    assert 0 < policy["definition"]["max-length-bytes"] <= 4 * 1024**3


def test_there_is_one_user_per_service_with_sha256_hashes_and_no_guest():
    users = _by_name("users")
    assert "guest" not in users
    for service in SERVICES:
        user = users[f"pdmfed-{service}"]
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert user["tags"] == []
        assert len(base64.b64decode(user["password_hash"])) == 36


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_user_may_read_only_its_own_queue_and_configure_nothing(service):
    perms = _permissions()[f"pdmfed-{service}"]
    own = SERVICE_QUEUES[service]
    assert _matches(perms["read"], own)
    assert _matches(perms["write"], "pdmfed") and _matches(
        perms["write"], "pdmfed.dlx"
    )  # publish only
    for name in (
        "pdmfed",
        "pdmfed.dlx",
        "pdmfed.dead",
        *SERVICE_QUEUES.values(),
        "amq_" + "0" * 32,
    ):
        assert not _matches(perms["configure"], name), f"{service} can configure {name}"
        if name not in ("pdmfed", "pdmfed.dlx"):  # a queue: writing one is binding it
            assert not _matches(perms["write"], name), f"{service} can bind {name}"
    for other_service, other in SERVICE_QUEUES.items():
        if other_service != service:
            assert not _matches(perms["read"], other), f"{service} can read {other}"
    assert not _matches(perms["read"], "pdmfed.dead")  # dead letters are for operators


def test_every_user_has_topic_permissions_on_both_exchanges_so_no_routing_key_is_open_by_default():
    # RabbitMQ lets a user publish any routing key on an exchange it has no topic permission for
    topics = {(t["user"], t["exchange"]) for t in DEFINITIONS["topic_permissions"]}
    assert topics == {
        (u["name"], ex) for u in DEFINITIONS["users"] for ex in ("pdmfed", "pdmfed.dlx")
    }


def test_the_shipped_permissions_are_the_ones_derived_from_who_sends_what():
    from federation.bus.permissions import permission_definitions

    derived = permission_definitions(VHOST)
    assert DEFINITIONS["permissions"] == derived["permissions"]
    assert DEFINITIONS["topic_permissions"] == derived["topic_permissions"]


def test_no_administrator_ships_and_no_user_has_full_permissions():
    assert all(not u["tags"] for u in DEFINITIONS["users"])
    for user, perms in _permissions().items():
        assert not all(perms[op] == ".*" for op in ("configure", "write", "read")), user


def test_the_committed_hashes_are_of_the_public_placeholders_in_env_example():
    env = _env_example()
    for user in DEFINITIONS["users"]:
        password = env[definitions_tool.password_env_var(user["name"])]
        assert "dev-only" in password
        assert definitions_tool.verify_password(password, user["password_hash"])
        assert not definitions_tool.verify_password(password + "x", user["password_hash"])


def test_when_a_password_is_hashed__it_verifies_only_with_that_password():
    salt = bytes.fromhex("908db42c")
    hashed = definitions_tool.hash_password("test12", salt)
    raw = base64.b64decode(hashed)
    assert raw[:4] == salt and len(raw) == 36
    assert definitions_tool.verify_password("test12", hashed)
    assert not definitions_tool.verify_password("test13", hashed)
    with pytest.raises(ValueError):
        definitions_tool.hash_password("x", b"\x00")


def test_when_rendering_without_every_password__it_names_the_missing_variables():
    with pytest.raises(KeyError, match="PDMFED_RABBITMQ_PASSWORD_SECURITY"):
        definitions_tool.render(DEFINITIONS, {"PDMFED_RABBITMQ_PASSWORD_CONNECTOR": "a" * 20})


def _real_passwords() -> dict[str, str]:
    return {
        definitions_tool.password_env_var(u["name"]): secrets.token_urlsafe(24)
        for u in DEFINITIONS["users"]
    }


def test_when_rendering_with_real_passwords__every_hash_is_replaced_and_verifies():
    env = _real_passwords()
    rendered = definitions_tool.render(DEFINITIONS, env)
    for user in rendered["users"]:
        assert definitions_tool.verify_password(
            env[definitions_tool.password_env_var(user["name"])], user["password_hash"]
        )
    assert rendered["queues"] == DEFINITIONS["queues"]
    assert (
        rendered["topic_permissions"] == DEFINITIONS["topic_permissions"]
    )  # least privilege survives
    assert DEFINITIONS["users"][0]["password_hash"] != rendered["users"][0]["password_hash"]
    assert definitions_tool.ADMIN_USER not in {u["name"] for u in rendered["users"]}


@pytest.mark.parametrize(
    "weak", ["dev-only-connector-password-change-me", "a" * 24, "connector123"]
)
def test_when_rendering_with_a_placeholder_or_weak_password__it_is_refused_by_name(weak):
    env = {**_real_passwords(), "PDMFED_RABBITMQ_PASSWORD_CONNECTOR": weak}
    with pytest.raises(ConfigError, match="PDMFED_RABBITMQ_PASSWORD_CONNECTOR") as err:
        definitions_tool.render(DEFINITIONS, env)
    assert weak not in str(err.value)


def test_when_an_admin_password_is_given__the_rendered_copy_has_an_administrator_with_it():
    admin = secrets.token_urlsafe(24)
    rendered = definitions_tool.render(
        DEFINITIONS, {**_real_passwords(), "PDMFED_RABBITMQ_PASSWORD_ADMIN": admin}
    )
    (user,) = [u for u in rendered["users"] if u["name"] == definitions_tool.ADMIN_USER]
    assert user["tags"] == ["administrator"] and definitions_tool.verify_password(
        admin, user["password_hash"]
    )
    with pytest.raises(ConfigError, match="PDMFED_RABBITMQ_PASSWORD_ADMIN"):
        definitions_tool.render(
            DEFINITIONS,
            {
                **_real_passwords(),
                "PDMFED_RABBITMQ_PASSWORD_ADMIN": "dev-only-admin-password-change-me",
            },
        )


def test_the_kubernetes_broker_config_is_the_compose_broker_config():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s/base/rabbitmq.yaml").read_text()))
    config = next(d for d in docs if d and d["kind"] == "ConfigMap")["data"]
    assert config["rabbitmq.conf"] == (RABBIT / "rabbitmq.conf").read_text()
    assert config["enabled_plugins"] == (RABBIT / "enabled_plugins").read_text()


@pytest.mark.parametrize("kind", ["exchanges", "queues", "bindings", "policies"])
def test_the_definitions_agree_with_the_bus_topology(kind):
    """A queue declared with other x-arguments than the bus uses fails with 406 at startup."""
    from federation.bus.topology import as_definitions

    def _key(item: dict):
        if kind == "bindings":
            return (item["source"], item["destination"], item["routing_key"])
        return item["name"]

    bus = {_key(i): i for i in as_definitions(vhost=VHOST)[kind]}
    ours = {_key(i): i for i in DEFINITIONS[kind]}
    assert ours == bus


def test_the_service_queue_names_match_the_bus_services():
    from federation.bus.topology import SERVICE_QUEUES as BUS_QUEUES

    assert sorted(q.name for q in BUS_QUEUES.values()) == sorted(SERVICE_QUEUES.values())
