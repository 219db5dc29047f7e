"""Least privilege in the shared database: each service's credentials reach its own schema only.

The database is started as the postgres image starts it on what `pdmfed keys init --state-url`
wrote (its superuser, then `postgres/initdb/*.sql`); each service connects with the URL of its
own `state.env`, as a compromised replica of it would.
"""

from __future__ import annotations

import base64
import logging
import secrets
import uuid
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
from federation.errors import ConfigError
from federation.provision import (
    ROLES_SQL_FILE,
    SERVICES,
    FactorySpec,
    ProvisionOptions,
    provision,
)
from federation.runtime.store_postgres_roles import role_of, schema_of, scram_sha256_verifier
from psycopg import errors, sql
from store_helpers import (
    ADMIN_URL,
    deployment_database,
    deployment_database_name,
    password_checking_server,
    postgres_unavailable,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    """What `pdmfed keys init --state-url` writes for a database on the test server."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("roles") / "secrets"
    host = urlsplit(ADMIN_URL).netloc.rsplit("@", 1)[-1]
    provision(
        out,
        [FactorySpec.parse("factory-1")],
        ProvisionOptions(state_url=f"postgresql://{host}/{deployment_database_name()}"),
    )
    return out


@pytest.fixture(scope="module")
def deployment(secrets_dir):
    """Each service's URL, on a database whose every service schema holds a value and a
    message, written through that service's own store and role."""
    from federation.runtime.store_postgres import PostgresStore

    with deployment_database(secrets_dir, SERVICES) as urls:
        for service, url in urls.items():
            blobs = secrets_dir.parent / "blobs" / service
            store = PostgresStore(url, schema=schema_of(service), blob_dir=blobs)
            try:
                with store.transaction() as tx:
                    tx.put("ledger/c1", {"owner": service})
                    tx.emit("round.completed", {"by": service}, round_num=1)
            finally:
                store.close()
        yield urls


#: What a compromised replica tries on another service's schema ``{victim}``.
ATTACKS = {
    "read its state": "SELECT * FROM {victim}.kv",
    "read its outbox": "SELECT * FROM {victim}.outbox",
    "forge a value": "INSERT INTO {victim}.kv (key, value) VALUES ('ledger/c2', '\\x00')",
    "rewrite a value": "UPDATE {victim}.kv SET value = '\\x00'",
    "delete its messages": "DELETE FROM {victim}.outbox",
    "drop its table": "DROP TABLE {victim}.kv",
    "drop its schema": "DROP SCHEMA {victim} CASCADE",
    "become its role": "SET ROLE {victim}",
}


def _pairs() -> list[tuple[str, str]]:
    return [(a, v) for a in SERVICES for v in SERVICES if a != v]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize(("attacker", "victim"), _pairs())
def test_a_compromised_service_is_refused_on_another_services_schema(
    deployment, attacker, victim, attack
):
    with psycopg.connect(deployment[attacker]) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(ATTACKS[attack].format(victim=schema_of(victim)))


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE SCHEMA pdmfed_intruder",
        "CREATE TABLE public.intruder (x INT)",
        "CREATE TEMPORARY TABLE intruder (x INT)",
        "CREATE ROLE intruder",
    ],
)
@pytest.mark.parametrize("attacker", SERVICES)
def test_a_compromised_service_creates_nothing_outside_its_schema(deployment, attacker, statement):
    with psycopg.connect(deployment[attacker]) as conn:  # rolled back, should it succeed
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement)


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_role_logs_in_and_holds_no_attribute_beyond_that(deployment, service):
    with psycopg.connect(deployment[service]) as conn:
        attributes = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
            " rolbypassrls, rolinherit FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        memberships = conn.execute(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member"
            " WHERE r.rolname = current_user"
        ).fetchone()[0]
    assert attributes == (True, False, False, False, False, False, False)
    assert memberships == 0


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_keeps_its_own_state_and_outbox_with_its_own_role(
    deployment, service, tmp_path
):
    from federation.runtime.store_postgres import SCHEMA_VERSION, PostgresStore

    store = PostgresStore(deployment[service], schema=schema_of(service), blob_dir=tmp_path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert store.read("ledger/c1") == {"owner": service}  # intact after every attack
        claim = store.claim_outbox()
        assert claim is not None and claim.head.msg_type == "round.completed"
        claim.release()  # the message stays for the next test run on this module's database
        assert [i.payload for i in store.pending_outbox()] == [{"by": service}]
    finally:
        store.close()


def test_the_roles_sql_holds_verifiers_postgresql_stores_as_they_are(deployment, secrets_dir):
    roles_file = (secrets_dir / "postgres" / "initdb" / ROLES_SQL_FILE).read_text()
    with psycopg.connect(ADMIN_URL) as conn:
        stored = dict(
            conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                ([role_of(s) for s in SERVICES],),
            ).fetchall()
        )
    for service, url in deployment.items():
        verifier = stored[role_of(service)]
        # taken as a verifier, not hashed again as if it were a password
        assert verifier.startswith("SCRAM-SHA-256$4096:")
        assert f"PASSWORD '{verifier}'" in roles_file
        assert unquote(urlsplit(url).password) not in roles_file


def test_a_verifier_we_compute_is_the_one_postgresql_computes_for_the_same_password_and_salt():
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    role, password = f"pdmfed_scram_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(32)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(
            sql.SQL("CREATE ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        try:
            (theirs,) = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()
        finally:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    iterations, salt = theirs.split("$")[1].split(":")
    ours = scram_sha256_verifier(password, salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == theirs
    assert scram_sha256_verifier(password + "x", salt=base64.b64decode(salt)) != theirs


@pytest.mark.parametrize("service", SERVICES)
def test_a_role_on_a_schema_it_does_not_own_stops_the_store_with_a_one_line_reason(
    deployment, service, tmp_path
):
    from federation.runtime.store_postgres import PostgresStore

    other = next(s for s in SERVICES if s != service)
    with pytest.raises(ConfigError) as refused:
        PostgresStore(deployment[service], schema=schema_of(other), blob_dir=tmp_path)
    message = str(refused.value)
    assert f"role {role_of(service)} on schema {schema_of(other)}" in message
    assert "permission denied" in message and "\n" not in message


def test_a_role_may_not_create_a_schema_it_was_not_given(deployment, tmp_path):
    from federation.runtime.store_postgres import PostgresStore

    with pytest.raises(ConfigError, match="role pdmfed_security on schema pdmfed_orchestrator"):
        PostgresStore(deployment["security"], schema="pdmfed_orchestrator", blob_dir=tmp_path)


def test_a_store_connected_as_a_superuser_says_so(pg_url, tmp_path, caplog):
    from federation.runtime.store_postgres import PostgresStore

    with caplog.at_level(logging.WARNING, logger="federation.runtime.store_postgres"):
        PostgresStore(pg_url, schema="pdmfed_security", blob_dir=tmp_path).close()
    assert "connected as a superuser" in caplog.text


def test_each_service_logs_in_with_its_own_password_against_the_verifier_and_no_other(tmp_path):
    from federation.runtime.store_postgres import PostgresStore

    with password_checking_server() as admin_url:
        out = tmp_path / "secrets"
        host = urlsplit(admin_url).netloc.rsplit("@", 1)[-1]
        provision(
            out,
            [FactorySpec.parse("factory-1")],
            ProvisionOptions(state_url=f"postgresql://{host}/{deployment_database_name()}"),
        )
        with deployment_database(out, SERVICES, admin_url=admin_url) as urls:
            for service, url in urls.items():
                store = PostgresStore(url, schema=schema_of(service), blob_dir=tmp_path / service)
                try:
                    with store.transaction() as tx:
                        tx.put("ledger/c1", {"owner": service})
                    assert store.read("ledger/c1") == {"owner": service}
                finally:
                    store.close()
                other = urlsplit(urls[next(s for s in SERVICES if s != service)]).password
                parts = urlsplit(url)
                wrong = parts._replace(netloc=parts.netloc.replace(parts.password, other, 1))
                with pytest.raises(psycopg.OperationalError, match="password authentication"):
                    psycopg.connect(wrong.geturl()).close()
