"""`pdmfed keys init`: one directory per component holding only its own private key and secrets.

Checked from the attacker's side: whoever gets one component's directory (one container's or
pod's mounts) must not find another component's private key, the envelope key where it is not
needed, or any factory's admin password outside that factory.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from federation.cli import main as pdmfed
from federation.provision import ENVELOPE_SENDERS, trusted_senders
from service_helpers import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FACTORIES = ("automotive_detroit_main", "chemical_houston_reactor")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "provisioned"
    code = pdmfed(
        [
            "keys",
            "init",
            "--out",
            str(out),
            "--factory",
            f"{FACTORIES[0]}=http://factory-1:8081",
            "--factory",
            FACTORIES[1],
            "--broker",
            "amqp://rabbitmq:5672/pdmfed",
            "--redis",
            "redis://redis:6379/0",
        ]
    )
    assert code == 0
    return out


def _components(out: Path) -> dict[str, dict]:
    return json.loads((out / "manifest.json").read_text())["components"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_each_component_directory_holds_exactly_its_own_private_key(deployment):
    components = _components(deployment)
    assert set(components) == {*ENVELOPE_SENDERS, *(f"factories/{f}" for f in FACTORIES)}
    for name, entry in components.items():
        private = [p.name for p in _files(deployment / name) if p.suffix == ".key"]
        assert private == [f"{entry['sender']}.key"], (name, private)


def test_private_material_is_owner_only(deployment):
    for path in [deployment, *deployment.rglob("*")]:
        if path.is_dir():
            assert _mode(path) == 0o700, path
        elif path.suffix == ".key" or path.parent.name == "secrets" or path.suffix == ".acl":
            assert _mode(path) == 0o600, path


def test_each_service_trusts_exactly_the_senders_of_what_it_consumes(deployment):
    for name, entry in _components(deployment).items():
        keys = deployment / entry["keys_dir"]
        pubs = sorted(p.stem for p in keys.glob("*.pub") if p.stem != entry["sender"])
        expected = sorted(s for s in trusted_senders(entry["role"]) if s != entry["sender"])
        assert pubs == expected == sorted(set(entry["trusts"]) - {entry["sender"]}), name
    security = deployment / "security" / "keys" / "factories"
    assert sorted(p.stem for p in security.glob("*.pub")) == sorted(FACTORIES)
    for name in ENVELOPE_SENDERS:
        if name != "security":
            assert not (deployment / name / "keys" / "factories").exists()


def test_a_factorys_admin_password_exists_only_in_that_factorys_directory(deployment):
    for ds in FACTORIES:
        secret_file = deployment / "factories" / ds / "secrets" / "pdmfed_datasite_admin_password"
        password = secret_file.read_text()
        holders = [p for p in _files(deployment) if password in p.read_text(errors="ignore")]
        assert holders == [secret_file]


def test_the_connector_holds_each_factorys_data_scientist_password_and_nothing_of_the_factories(
    deployment,
):
    from federation.datasite_registry import DatasiteRegistry

    manifest = json.loads((deployment / "manifest.json").read_text())
    path = deployment / manifest["components"]["connector"]["datasite_registry"]
    registry = DatasiteRegistry.load(path)  # what the connector reads (PDMFED_DATASITE_REGISTRY)
    assert registry.ids == sorted(FACTORIES)
    assert registry.get(FACTORIES[0]).url == "http://factory-1:8081"
    assert (
        registry.get(FACTORIES[1]).url == f"http://{FACTORIES[1]}:8080"
    )  # the compose/k8s default
    passwords = set()
    for ds in FACTORIES:
        factory_secrets = deployment / "factories" / ds / "secrets"
        entry = registry.get(ds)
        assert entry.password_file.parent == path.parent and _mode(entry.password_file) == 0o600
        held = entry.password()
        assert held == (factory_secrets / "pdmfed_datasite_orchestrator_password").read_text()
        assert entry.email == (factory_secrets / "pdmfed_datasite_orchestrator_email").read_text()
        passwords.add(held)
    assert len(passwords) == len(FACTORIES), "factories share a connector password"


def test_factories_get_no_envelope_key_and_each_broker_password_is_its_owners(deployment):
    envelope = (deployment / "connector" / "secrets" / "pdmfed_encryption_key").read_text()
    for ds in FACTORIES:
        assert not any(
            envelope in p.read_text(errors="ignore") for p in _files(deployment / "factories" / ds)
        )
    urls = {
        s: (deployment / s / "secrets" / "pdmfed_amqp_url").read_text() for s in ENVELOPE_SENDERS
    }
    assert len(set(urls.values())) == len(urls)
    for sender, url in urls.items():
        assert url.startswith(f"amqp://pdmfed-{sender}:") and url.endswith("@rabbitmq:5672/pdmfed")
    acl = (deployment / "redis" / "users.acl").read_text()
    for sender in ENVELOPE_SENDERS:
        assert (deployment / sender / "secrets" / "pdmfed_redis_password").read_text() not in acl


def test_when_the_directory_is_not_empty__keys_init_refuses_and_overwrites_nothing(
    deployment, capsys
):
    before = {p: p.read_bytes() for p in _files(deployment)}
    assert pdmfed(["keys", "init", "--out", str(deployment), "--factory", "x_site"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in _files(deployment)} == before


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--factory", "a", "--factory", "a"], "unique"),
        (["--factory", "a=ftp://x"], "not http"),
        (["--factory", "security"], "named like a component"),
        (["--factory", "a", "--broker", "http://rabbit"], "amqp"),
    ],
)
def test_when_arguments_are_bad__keys_init_fails_with_one_line(tmp_path, capsys, args, reason):
    assert pdmfed(["keys", "init", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and err.count("\n") == 0
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_a_service_starts_from_its_own_directory_alone(deployment, tmp_path):
    """Its keys and secrets mounts are all the security service needs (bus/Redis wiring aside)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDMFED_")}
    env.update(
        PDMFED_KEYS_DIR=str(deployment / "security" / "keys"),
        PDMFED_SECRETS_DIR=str(deployment / "security" / "secrets"),
        PDMFED_STATE_DIR=str(tmp_path / "state"),
        # no broker or Redis in this test: the environment overrides the secret files
        PDMFED_AMQP_URL="",
        PDMFED_REDIS_URL="",
    )
    service = ServiceProcess("security", env)
    try:
        line = service.wait_for_line("trusts factories")
        assert line is not None, service.lines[-10:]
        assert ", ".join(sorted(FACTORIES)) in line
        assert service.wait_for_line("security started") is not None, service.lines[-10:]
    finally:
        service.stop()


def _connector_env(deployment: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDMFED_")}
    env.update(
        PDMFED_KEYS_DIR=str(deployment / "connector" / "keys"),
        PDMFED_SECRETS_DIR=str(deployment / "connector" / "secrets"),
        PDMFED_STATE_DIR=str(tmp_path / "state"),
        PDMFED_AMQP_URL="",
        PDMFED_REDIS_URL="",
        **extra,
    )
    return env


def test_the_connector_starts_from_its_own_directory_and_names_the_datasites_of_its_registry(
    deployment, tmp_path
):
    registry = deployment / "connector" / "datasites" / "datasites.json"
    service = ServiceProcess(
        "connector", _connector_env(deployment, tmp_path, PDMFED_DATASITE_REGISTRY=str(registry))
    )
    try:
        line = service.wait_for_line("datasites of its registry")
        assert line is not None, service.lines[-10:]
        assert ", ".join(sorted(FACTORIES)) in line
        assert service.wait_for_line("connector started") is not None, service.lines[-10:]
    finally:
        service.stop()


def test_without_its_datasite_registry__the_connector_refuses_to_start_with_one_line(
    deployment, tmp_path
):
    service = ServiceProcess("connector", _connector_env(deployment, tmp_path))
    try:
        code = service.wait_exit()
    finally:
        service.stop()
    errors = [ln for ln in service.lines if ln.startswith("pdmfed:")]
    assert code == 2 and len(errors) == 1 and "PDMFED_DATASITE_REGISTRY" in errors[0], (
        service.lines[-5:]
    )
