"""`pdmfed validate-security` checks the component it is pointed at, on a `pdmfed keys init` tree."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from federation.bus.rabbitmq import RabbitBus
from federation.bus.topology import DEFAULT_TOPOLOGY
from federation.provision import FactorySpec, provision

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import clean_env, run_pdmfed  # noqa: E402

pytestmark = pytest.mark.integration

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


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
    """A `keys init` tree for two factories, and the services' topology declared on the broker."""
    out = tmp_path / "deploy"
    provision(out, [FactorySpec.parse("plant_a"), FactorySpec.parse("plant_b")])
    prefix = f"vs-{uuid.uuid4().hex[:8]}"
    asyncio.run(_topology(prefix, create=True))

    def env(component: str, **extra: str) -> dict[str, str]:
        # the component's two mounts; the broker URL of the test's (the tree's names user pdmfed-<component>)
        mounts = {
            "PDMFED_KEYS_DIR": str(out / component / "keys"),
            "PDMFED_SECRETS_DIR": str(out / component / "secrets"),
            "PDMFED_AMQP_URL": AMQP_URL,
            "PDMFED_TOPOLOGY_PREFIX": prefix,
        }
        return clean_env(**{**mounts, **extra})

    yield out, prefix, env
    asyncio.run(_topology(prefix, create=False))


def test_when_the_orchestrator_s_mounts_are_complete__every_check_is_ticked_and_exit_is_0(
    tmp_path, deployment
):
    out, prefix, env = deployment
    run = run_pdmfed("validate-security", tmp_path=tmp_path, env=env("orchestrator"))
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout.splitlines() == [
        "  ✓ encryption key and salt are set and strong",
        "  ✓ own private key orchestrator.key, readable by its owner only",
        "  ✓ trust store holds every sender the orchestrator consumes from (aggregator, connector, security, "
        "trainer-dispatch)",
        "  ✓ every trusted sender has one role (5 senders)",
        "  ✓ RabbitMQ at 127.0.0.1:5672 (vhost '/', user 'guest'): the exchange and all 5 queues exist",
        "deployment OK",
    ]


def test_when_security_is_checked__its_factory_keys_are_counted(tmp_path, deployment):
    out, prefix, env = deployment
    run = run_pdmfed(
        "validate-security", "--role", "security", tmp_path=tmp_path, env=env("security")
    )
    assert run.returncode == 0, run.stdout
    assert "  ✓ 2 factory public keys (plant_a, plant_b)" in run.stdout.splitlines()


def test_when_dispatch_does_not_trust_the_orchestrator__the_dead_lettering_is_named(
    tmp_path, deployment
):
    out, prefix, env = deployment
    keys = out / "trainer-dispatch" / "keys"
    (keys / "orchestrator.pub").unlink()
    (keys / "trainer-dispatch.key").chmod(0o644)
    run = run_pdmfed(
        "validate-security",
        "--role",
        "trainer-dispatch",
        tmp_path=tmp_path,
        env=env("trainer-dispatch"),
    )
    assert run.returncode == 1
    assert run.stdout.splitlines()[1:5] == [
        f"  ✗ private key {keys}/trainer-dispatch.key is readable by group or others",
        f"    → chmod 600 {keys}/trainer-dispatch.key",
        f"  ✗ trust store {keys} lacks the public key of orchestrator: their messages to the trainer-dispatch "
        "are dead-lettered",
        "    → copy each sender's <name>.pub into it",
    ]
    assert run.stdout.splitlines()[-1] == "deployment has 2 issues"


def test_when_the_sender_roles_are_missing__the_check_says_the_service_would_not_start(
    tmp_path, deployment
):
    out, prefix, env = deployment
    (out / "aggregator" / "keys" / "senders.json").unlink()
    run = run_pdmfed(
        "validate-security", "--role", "aggregator", tmp_path=tmp_path, env=env("aggregator")
    )
    assert run.returncode == 1
    assert any(ln.startswith("  ✗ no sender roles: ") for ln in run.stdout.splitlines()), run.stdout


def test_when_the_services_topology_is_missing__the_broker_check_names_what_is_missing(
    tmp_path, deployment
):
    out, prefix, env = deployment
    run = run_pdmfed(
        "validate-security",
        tmp_path=tmp_path,
        env=env("orchestrator", PDMFED_TOPOLOGY_PREFIX=f"{prefix}-absent"),
    )
    assert run.returncode == 1
    assert (
        f"  ✗ RabbitMQ at 127.0.0.1:5672 (vhost '/', user 'guest'): missing exchange {prefix}-absent, "
        f"queue {prefix}-absent.connector"
    ) in run.stdout


def test_when_self_test_flags_are_given_without_self_test__they_are_refused(tmp_path):
    run = run_pdmfed("validate-security", "--no-dp", tmp_path=tmp_path)
    assert (run.returncode, run.stderr) == (2, "pdmfed: --no-dp only apply with --self-test\n")
