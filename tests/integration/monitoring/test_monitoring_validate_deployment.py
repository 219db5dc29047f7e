"""`pdmfed validate-security` checks the deployment it is pointed at: secrets, keys, trust store, broker."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from federation.bus.rabbitmq import RabbitBus
from federation.bus.topology import DEFAULT_TOPOLOGY
from federation.crypto.signing import SigningIdentity

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import clean_env, run_pdmfed  # noqa: E402

pytestmark = pytest.mark.integration

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
SENDERS = ("orchestrator", "connector", "dispatch", "security", "aggregator")


async def _topology(prefix: str, *, create: bool) -> None:
    bus = RabbitBus(
        AMQP_URL, service="test", topology=DEFAULT_TOPOLOGY.with_prefix(prefix), declare=create
    )
    await bus.start()
    try:
        if not create:
            await bus.delete_topology()
    finally:
        await bus.close()


@pytest.fixture
def deployment(tmp_path):
    """A keys directory with every sender's key pair and two factory keys, and a declared topology."""
    keys = tmp_path / "keys"
    for sender in SENDERS:
        SigningIdentity.load_or_create(keys, sender)
    for factory in ("plant_a", "plant_b"):
        SigningIdentity.load_or_create(tmp_path / "factory-keys", factory)
        (keys / "factories").mkdir(exist_ok=True)
        (keys / "factories" / f"{factory}.pub").write_bytes(
            (tmp_path / "factory-keys" / f"{factory}.pub").read_bytes()
        )
    prefix = f"vs-{uuid.uuid4().hex[:8]}"
    asyncio.run(_topology(prefix, create=True))
    env = clean_env(
        PDMFED_AMQP_URL=AMQP_URL,
        PDMFED_KEYS_DIR=str(keys),
        PDMFED_TOPOLOGY_PREFIX=prefix,
        PDMFED_ENCRYPTION_KEY="Zq8vL2mXp4Rt7Wn9Kc3Bd6Hy",
        PDMFED_KEY_SALT="8fK2pQ9xLm3v",
    )
    yield keys, prefix, env
    asyncio.run(_topology(prefix, create=False))


def test_when_the_deployment_is_complete__validate_security_ticks_every_check_and_exits_0(
    tmp_path, deployment
):
    keys, prefix, env = deployment
    run = run_pdmfed("validate-security", tmp_path=tmp_path, env=env)
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout.splitlines() == [
        "  ✓ encryption key and salt are set and strong",
        f"  ✓ trust store {keys} holds the public key of every sender (orchestrator, connector, dispatch, "
        "security, aggregator)",
        f"  ✓ 2 factory public keys in {keys}/factories (plant_a, plant_b)",
        "  ✓ RabbitMQ at 127.0.0.1:5672 (vhost '/', user 'guest'): the exchange and all 5 queues exist",
        "deployment OK",
    ]


def test_when_the_orchestrator_key_is_not_trusted_and_a_key_is_world_readable__both_are_issues(
    tmp_path, deployment
):
    keys, prefix, env = deployment
    (keys / "orchestrator.pub").unlink()
    (keys / "security.key").chmod(0o644)
    run = run_pdmfed("validate-security", tmp_path=tmp_path, env=env)
    assert run.returncode == 1
    assert run.stdout.splitlines()[1:6] == [
        f"  ✗ trust store {keys} lacks the public key of orchestrator: their messages are dead-lettered",
        "    → copy each sender's <name>.pub into it",
        "  ✗ private keys readable by group or others: security.key",
        "    → chmod 600 each private key",
        f"  ✓ 2 factory public keys in {keys}/factories (plant_a, plant_b)",
    ]
    assert run.stdout.splitlines()[-1] == "deployment has 2 issues"


def test_when_the_services_topology_is_missing__the_broker_check_names_what_is_missing(
    tmp_path, deployment
):
    keys, prefix, env = deployment
    env = {**env, "PDMFED_TOPOLOGY_PREFIX": f"{prefix}-absent"}
    run = run_pdmfed("validate-security", tmp_path=tmp_path, env=env)
    assert run.returncode == 1
    assert (
        f"  ✗ RabbitMQ at 127.0.0.1:5672 (vhost '/', user 'guest'): missing exchange {prefix}-absent, "
        f"queue {prefix}-absent.connector"
    ) in run.stdout


def test_when_self_test_flags_are_given_without_self_test__they_are_refused(tmp_path):
    run = run_pdmfed("validate-security", "--no-dp", tmp_path=tmp_path)
    assert (run.returncode, run.stderr) == (2, "pdmfed: --no-dp only apply with --self-test\n")
