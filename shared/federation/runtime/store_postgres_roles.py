"""The services' PostgreSQL roles: one login role per service, owning its own schema and nothing else.

``roles_sql`` is what the database's superuser runs once (the postgres image at first start,
from ``/docker-entrypoint-initdb.d``; or by hand with psql on an existing database). It holds
SCRAM-SHA-256 verifiers, never a password: the plaintext stays in each service's
``state.env``. A service's role can use its own schema and cannot read, write or drop another
service's, create a schema, use ``public``, create temporary tables, databases or roles.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

from federation.errors import ConfigError

__all__ = ["SCRAM_ITERATIONS", "role_of", "roles_sql", "schema_of", "scram_sha256_verifier"]

#: PostgreSQL's own default (scram_iterations), so a verifier we write costs a login what one
#: the server computed would.
SCRAM_ITERATIONS = 4096
_SALT_BYTES = 16
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def schema_of(service: str) -> str:
    """``pdmfed_<service>`` with ``-`` as ``_``: the identifier PostgreSQL takes unquoted."""
    name = "pdmfed_" + service.replace("-", "_")
    if not _IDENTIFIER.match(name):
        raise ValueError(f"no PostgreSQL schema for service {service!r}")
    return name


def role_of(service: str) -> str:
    """The service's login role, named like the schema it owns."""
    return schema_of(service)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802, RFC 7677), the
    form PostgreSQL stores and accepts in ``PASSWORD '...'`` (ASCII passwords: SASLprep leaves
    them unchanged)."""
    if not password.isascii():
        raise ValueError("only ASCII passwords (keys init writes URL-safe tokens)")
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _role_statements(database: str, service: str, password: str) -> str:
    role, schema = role_of(service), schema_of(service)
    return f"""
-- {service}
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role}; END IF;
END $$;
ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS
  PASSWORD '{scram_sha256_verifier(password)}';
GRANT CONNECT ON DATABASE {database} TO {role};
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role};
ALTER SCHEMA {schema} OWNER TO {role};
-- tables created before per-service roles (by the superuser) become the role's
DO $$ DECLARE t record; BEGIN
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' LOOP
    EXECUTE format('ALTER TABLE {schema}.%I OWNER TO {role}', t.tablename);
  END LOOP;
END $$;
"""


def roles_sql(database: str, passwords: Mapping[str, str]) -> str:
    """The SQL that gives each service of ``passwords`` (service -> its password) its own login
    role owning its own schema of ``database``, and closes the database to everyone else.
    Run by a superuser connected to ``database``; running it again changes nothing but the
    verifiers' salts."""
    if not _IDENTIFIER.match(database):
        raise ConfigError(
            f"database name {database!r}: use a plain PostgreSQL identifier ([a-z_][a-z0-9_]*)"
        )
    header = f"""-- pdm-federation: one login role per service, each owning only its own schema
-- (docs/replicas.md). Written by `pdmfed keys init --state-url`; SCRAM-SHA-256 verifiers only.
-- Run by the postgres image at first start (/docker-entrypoint-initdb.d), or on an existing
-- database: psql -v ON_ERROR_STOP=1 -U <superuser> -d {database} -f <this file>
BEGIN;
REVOKE ALL ON DATABASE {database} FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
"""
    body = "".join(_role_statements(database, s, pw) for s, pw in sorted(passwords.items()))
    return header + body + "COMMIT;\n"
