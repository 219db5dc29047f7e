"""`pdmfed keys init` for a container stack: env files, broker definitions, files handed to the images' user."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from federation.bus.definitions import verify_password
from federation.cli import main as pdmfed
from federation.provision import ENVELOPE_SENDERS, ROLES_SQL_FILE, SERVICES
from federation.runtime.store_postgres_roles import role_of, scram_sha256_verifier

ROOT = Path(__file__).resolve().parents[3]
OWNER = (54321, 54322)


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _keys_init(out: Path, *options: str) -> int:
    """`pdmfed keys init --out OUT --factory factory-1 OPTIONS…`; its exit code."""
    return pdmfed(["keys", "init", "--out", str(out), "--factory", "factory-1", *options])


@pytest.fixture(scope="module")
def stack_secrets(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stack") / "deployment"
    owner = [] if os.geteuid() != 0 else ["--owner", f"{OWNER[0]}:{OWNER[1]}"]
    code = _keys_init(
        out,
        "--factory",
        "factory-2",
        "--env-files",
        "--rabbitmq-definitions",
        str(ROOT / "deploy/rabbitmq/definitions.json"),
        "--state-url",
        "postgresql://postgres:5432/pdmfed",
        *owner,
    )
    assert code == 0
    return out


def test_each_component_env_file_repeats_exactly_its_own_secret_files(stack_secrets):
    for sender in ENVELOPE_SENDERS:
        env = _env(stack_secrets / sender / "env")
        files = {
            p.name.upper(): p.read_text() for p in (stack_secrets / sender / "secrets").iterdir()
        }
        assert env == files, sender
        assert {"PDMFED_AMQP_URL", "PDMFED_REDIS_URL", "PDMFED_REDIS_PASSWORD"} <= set(env)
    factory = _env(stack_secrets / "factories" / "factory-1" / "env")
    assert "PDMFED_ENCRYPTION_KEY" not in factory and factory["PDMFED_DATASITE_ADMIN_PASSWORD"]
    assert set(_env(stack_secrets / "grafana" / "env")) == {"GF_SECURITY_ADMIN_PASSWORD"}


def test_the_broker_definitions_hold_each_senders_own_password_hash_and_no_password(stack_secrets):
    rendered = (stack_secrets / "rabbitmq" / "definitions.json").read_text()
    users = {u["name"]: u["password_hash"] for u in json.loads(rendered)["users"]}
    for sender in ENVELOPE_SENDERS:
        password = unquote(
            urlsplit(_env(stack_secrets / sender / "env")["PDMFED_AMQP_URL"]).password
        )
        assert verify_password(password, users[f"pdmfed-{sender}"]) and password not in rendered
    admin = (stack_secrets / "rabbitmq" / "secrets" / "pdmfed_rabbitmq_admin_password").read_text()
    assert verify_password(admin, users["pdmfed-admin"])


def test_a_template_user_without_a_password_stops_keys_init_with_its_name(tmp_path, capsys):
    template = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    template["users"].append({**template["users"][0], "name": "pdmfed-intruder"})
    (tmp_path / "defs.json").write_text(json.dumps(template))
    code = _keys_init(tmp_path / "out", "--rabbitmq-definitions", str(tmp_path / "defs.json"))
    assert code != 0
    assert "PDMFED_RABBITMQ_PASSWORD_INTRUDER" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_with_an_owner_every_file_is_the_images_users_and_only_hashes_are_readable_by_others(
    stack_secrets,
):
    readable = {
        stack_secrets / "rabbitmq" / "definitions.json",
        stack_secrets / "redis" / "users.acl",
        stack_secrets / "postgres" / "initdb" / ROLES_SQL_FILE,
    }
    traversable = {stack_secrets, *(stack_secrets / d for d in ("rabbitmq", "redis", "postgres"))}
    # the servers' own passwords, for compose's group_add of the owner's group (their uids
    # differ between images): Redis's health check, Grafana's admin
    group_readable = {stack_secrets / "redis" / "secrets", stack_secrets / "grafana" / "secrets"}
    for path in [stack_secrets, *stack_secrets.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == OWNER, path
        if path in readable:  # hashes only, for the servers' own users
            assert _mode(path) == 0o644, path
        elif path.parent in group_readable:  # read by a server through the owner's group
            assert _mode(path) == 0o640, path
        elif path in group_readable:
            assert _mode(path) == 0o750, path
        elif path in traversable:
            assert _mode(path) == 0o711, path  # traversable, not listable
        elif path == stack_secrets / "postgres" / "initdb":
            assert _mode(path) == 0o755, path  # the image runs every file it lists there
        elif path.is_dir():
            assert _mode(path) == 0o700, path
        elif (
            path.parent.name == "secrets"
            or path.name in ("env", "state.env")
            or path.suffix in (".key", ".password")
        ):
            assert _mode(path) == 0o600, path
        else:  # public keys, sender roles, the manifest: no secret, in private directories
            assert _mode(path) & 0o022 == 0, path


def test_an_owner_that_is_not_uid_gid_is_refused(tmp_path, capsys):
    code = _keys_init(tmp_path / "out", "--owner", "app")
    assert code != 0 and "--owner 'app' is not UID:GID" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_with_a_state_url_each_service_gets_its_own_database_role_and_postgres_the_superuser(
    stack_secrets,
):
    postgres = _env(stack_secrets / "postgres" / "env")
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]) == ("pdmfed", "pdmfed")
    roles_sql = (stack_secrets / "postgres" / "initdb" / ROLES_SQL_FILE).read_text()
    passwords = set()
    for service in SERVICES:
        url = urlsplit(_env(stack_secrets / service / "state.env")["PDMFED_STATE_URL"])
        assert (url.username, url.hostname, url.path) == (role_of(service), "postgres", "/pdmfed")
        password = unquote(url.password)
        passwords.add(password)
        assert password not in roles_sql  # the init SQL holds verifiers only
        (verifier,) = re.findall(rf"ALTER ROLE {url.username} [^;]*PASSWORD '([^']+)'", roles_sql)
        iterations, salt = verifier.split("$")[1].split(":")
        assert verifier == scram_sha256_verifier(
            password, salt=base64.b64decode(salt), iterations=int(iterations)
        )
        assert "PDMFED_STATE_URL" not in _env(
            stack_secrets / service / "env"
        )  # the base stays on SQLite
    assert len(passwords) == len(SERVICES)  # one password per role
    # the superuser's password: the postgres container's only
    assert (
        postgres["POSTGRES_PASSWORD"] not in passwords
        and postgres["POSTGRES_PASSWORD"] not in roles_sql
    )
    assert not (stack_secrets / "orchestrator" / "state.env").exists()


def test_a_state_url_whose_database_is_not_a_plain_identifier_is_refused(tmp_path, capsys):
    code = _keys_init(tmp_path / "out", "--state-url", "postgresql://postgres:5432/pdm-fed")
    assert code != 0 and "database name 'pdm-fed'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_compose_reads_grafanas_postgres_and_each_services_database_url_as_files(stack_secrets):
    """One file per setting, as PDMFED_SECRETS_DIR, POSTGRES_PASSWORD_FILE and Grafana's
    $__file{} read them; the same values as the env files Kubernetes' --from-env-file reads."""
    grafana = (stack_secrets / "grafana" / "secrets" / "gf_security_admin_password").read_text()
    assert grafana == _env(stack_secrets / "grafana" / "env")["GF_SECURITY_ADMIN_PASSWORD"]
    postgres = (stack_secrets / "postgres" / "secrets" / "postgres_password").read_text()
    assert postgres == _env(stack_secrets / "postgres" / "env")["POSTGRES_PASSWORD"]
    for service in SERVICES:
        (url,) = (stack_secrets / service / "state-secrets").iterdir()
        assert url.name == "pdmfed_state_url"
        assert url.read_text() == _env(stack_secrets / service / "state.env")["PDMFED_STATE_URL"]
        # not in its secrets directory: the stack without the replicas override stays on SQLite
        assert not (stack_secrets / service / "secrets" / "pdmfed_state_url").exists()


def test_without_env_files__grafanas_password_is_written_and_no_env_file(tmp_path):
    assert _keys_init(tmp_path / "out") == 0
    assert (tmp_path / "out" / "grafana" / "secrets" / "gf_security_admin_password").read_text()
    assert not list((tmp_path / "out").rglob("env"))
