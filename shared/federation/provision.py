"""`pdmfed keys init`: every key and secret of a deployment, one directory per component.

Each component directory holds only what that component needs: its own private key, the
public keys of the senders it must believe, and its own secrets (one file per setting, named
like the variable in lower case, read through PDMFED_SECRETS_DIR). ``manifest.json`` says who
holds what and who trusts whom; it holds no secret.

    OUT/manifest.json
    OUT/<service or orchestrator>/keys/     PDMFED_KEYS_DIR: <sender>.key (0600), trusted *.pub,
                                             senders.json (each sender id's role)
                                             (security also keys/factories/<datasite>.pub)
    OUT/<service or orchestrator>/secrets/  PDMFED_SECRETS_DIR: pdmfed_encryption_key, ...
    OUT/connector/datasites/                 PDMFED_DATASITE_REGISTRY=.../datasites.json: the
                                             connector's datasite registry (id -> url, account,
                                             password file <id>.password next to it)
    OUT/factories/<datasite>/keys/          the factory's signing key (for `datasite launch`)
    OUT/factories/<datasite>/secrets/       its admin password (never leaves the factory) and
                                             the connector account it creates
    OUT/redis/users.acl                     Redis ACL file (password hashes only): one user per
                                             role, and the PING-only health-check user
    OUT/redis/secrets/rediscli_auth         the health-check user's password (probes only)
    OUT/grafana/secrets/                    Grafana's admin password (gf_security_admin_password)

Compose bind-mounts ``<component>/secrets/`` read-only at /run/pdmfed/secrets (PDMFED_SECRETS_DIR)
and Kubernetes makes a Secret of it (``--from-file``): no secret travels in an environment.

For a container stack (``--rabbitmq-definitions``, ``--owner``, ``--env-files``):

    OUT/rabbitmq/definitions.json           the broker definitions rendered with each broker
                                             user's password hash (no password)
    OUT/rabbitmq/secrets/                   the broker administrator's password (operators only)
    OUT/<component>/env                     (``--env-files``) its secrets again, as NAME=value
                                             lines, for tools that want an env file; neither
                                             compose nor Kubernetes uses them

For services on replicas sharing PostgreSQL (``--state-url``; docs/replicas.md):

    OUT/<service>/state-secrets/pdmfed_state_url
                                            PDMFED_STATE_URL as the service's own database role
                                             pdmfed_<service> (its password), owner of its schema
                                             only: compose's replicas override adds this directory
                                             to PDMFED_SECRETS_DIR
    OUT/<service>/state.env                 the same as PDMFED_STATE_URL=... (Kubernetes'
                                             --from-env-file)
    OUT/postgres/secrets/postgres_password  the superuser's password, for the postgres container
                                             only (POSTGRES_PASSWORD_FILE)
    OUT/postgres/env                        POSTGRES_USER / POSTGRES_DB / POSTGRES_PASSWORD: the
                                             same superuser (Kubernetes' --from-env-file)
    OUT/postgres/initdb/10-pdmfed-roles.sql the roles and their schemas (SCRAM verifiers only), run
                                             by the postgres image at first start
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from federation.bus.definitions import ADMIN_USER as BROKER_ADMIN
from federation.bus.definitions import password_env_var, render
from federation.crypto.redis_acl import HEALTH_USER, acl_user, render_acl_file
from federation.crypto.signing import SigningIdentity, check_sender_name
from federation.datasite_registry import write_registry
from federation.errors import ConfigError
from federation.runtime.private_files import open_private, private_dir
from federation.runtime.roles import write_roles_file
from federation.runtime.store_postgres_roles import role_of, roles_sql
from federation.wire.contracts import ENVELOPE_ROLES, SERVICE_ROLES, Role, sender_roles_of

__all__ = [
    "SERVICES",
    "FactorySpec",
    "ProvisionOptions",
    "provision",
    "trusted_senders",
    "CONNECTOR_ACCOUNT_EMAIL",
]

ORCHESTRATOR = Role.ORCHESTRATOR.value
#: The four services; each is also the sender id and role of its envelopes.
SERVICES = tuple(r.value for r in SERVICE_ROLES)
#: Everyone who seals envelopes.
ENVELOPE_SENDERS = tuple(r.value for r in ENVELOPE_ROLES)
CONNECTOR_ACCOUNT_EMAIL = "connector@pdm-factory.com"
ADMIN_EMAIL = "admin@pdm-factory.com"
_SECRET_BYTES = 32
#: The database's superuser (POSTGRES_USER): only the postgres container has its password.
POSTGRES_SUPERUSER = "pdmfed"
#: The roles' SQL the postgres image runs at first start (postgres/initdb/, hashes only).
ROLES_SQL_FILE = "10-pdmfed-roles.sql"


def trusted_senders(role: str) -> list[str]:
    """The senders whose envelopes ``role`` must verify: those of the types it consumes."""
    return sorted(r.value for r in sender_roles_of(role))


@dataclass(frozen=True)
class FactorySpec:
    """One factory: its datasite id and the URL the connector reaches it at."""

    datasite_id: str
    url: str

    @classmethod
    def parse(cls, text: str) -> FactorySpec:
        """``ID=URL``, or ``ID`` for ``http://ID:8080`` (how compose and k8s name datasites)."""
        datasite_id, _, url = text.partition("=")
        check_sender_name(datasite_id)
        url = url or f"http://{datasite_id}:8080"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"factory {datasite_id}: URL {url!r} is not http(s)://host[:port]")
        return cls(datasite_id, url)


@dataclass(frozen=True)
class ProvisionOptions:
    """Where the shared services are, as the components will reach them."""

    broker_url: str = "amqp://rabbitmq:5672/pdmfed"
    redis_url: str | None = "redis://redis:6379/0"
    #: Also write each component's secrets as ``<component>/env`` (NAME=value lines).
    env_files: bool = False
    #: RabbitMQ definitions template to render with the broker users' password hashes.
    broker_definitions: Path | None = None
    #: UID, GID that own every file (the container images' user).
    owner: tuple[int, int] | None = None
    #: PostgreSQL URL (no credentials) of the services' shared state, for replicas deployments.
    state_url: str | None = None


def _token() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def _write_secret(directory: Path, name: str, value: str) -> str:
    with open_private(directory / name) as fh:
        fh.write(value.encode("utf-8"))
    return name


def _with_credentials(url: str, user: str, password: str, *, what: str = "the broker URL") -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ConfigError(f"give {what} without credentials: each component gets its own")
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _public(identity: SigningIdentity, directory: Path) -> None:
    private_dir(directory)
    (directory / f"{identity.sender}.pub").write_bytes(identity.public_pem())


class _Writer:
    """Writes one deployment's tree and remembers what it wrote for the manifest."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.components: dict[str, dict] = {}
        #: component directory -> {setting file name: value}, for the env files
        self.values: dict[str, dict[str, str]] = {}

    def component(self, name: str, role: str, sender: str | None) -> tuple[Path, Path, dict]:
        base = private_dir(self.out / name)
        entry = {
            "role": role,
            "sender": sender,
            "keys_dir": f"{name}/keys",
            "secrets_dir": f"{name}/secrets",
            "secrets": [],
            "trusts": [],
            "trusts_factories": [],
        }
        self.components[name] = entry
        return private_dir(base / "keys"), private_dir(base / "secrets"), entry

    def secret(self, entry: dict, directory: Path, name: str, value: str) -> None:
        entry["secrets"].append(_write_secret(directory, name, value))
        self.values.setdefault(str(directory.parent.relative_to(self.out)), {})[name] = value

    def infrastructure(self, name: str, secrets_: Mapping[str, str]) -> None:
        """A server's own secrets (no key, no manifest component): ``<name>/secrets/``."""
        directory = private_dir(self.out / name / "secrets")
        for key, value in secrets_.items():
            _write_secret(directory, key, value)
            self.values.setdefault(name, {})[key] = value

    def env_files(self) -> None:
        """``<component>/env``: each component's secrets as NAME=value (upper-cased names)."""
        for name, values in self.values.items():
            with open_private(self.out / name / "env") as fh:
                fh.write(
                    "".join(f"{k.upper()}={v}\n" for k, v in sorted(values.items())).encode("utf-8")
                )


def provision(
    out: str | Path, factories: Iterable[FactorySpec], options: ProvisionOptions | None = None
) -> dict:
    """Create every key and secret under ``out`` (which must not exist or be empty); the manifest."""
    options = options or ProvisionOptions()
    factories = list(factories)
    ids = [f.datasite_id for f in factories]
    if not factories:
        raise ConfigError("name at least one factory (--factory ID[=URL])")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"factory ids must be unique, got {ids}")
    clash = set(ids) & set(ENVELOPE_SENDERS)
    if clash:
        raise ConfigError(f"a factory may not be named like a component: {sorted(clash)}")
    if options.state_url is not None:
        _state_database(options.state_url)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: keys init never overwrites keys")
    private_dir(out)
    writer = _Writer(out)

    identities = {s: SigningIdentity.generate(s) for s in ENVELOPE_SENDERS}
    factory_ids = {f.datasite_id: SigningIdentity.generate(f.datasite_id) for f in factories}
    passphrase, salt = _token(), secrets.token_hex(16)
    broker = {s: _token() for s in ENVELOPE_SENDERS}
    redis = {s: _token() for s in ENVELOPE_SENDERS} if options.redis_url else {}
    connector_passwords = {ds: _token() for ds in ids}

    for sender in ENVELOPE_SENDERS:
        keys, secret_dir, entry = writer.component(sender, sender, sender)
        identities[sender].save(keys)
        for trusted in trusted_senders(sender):
            if trusted != sender:
                _public(identities[trusted], keys)
            entry["trusts"].append(trusted)
        # each sender id (here: its component's name) -> its one role, for the consumers' checks
        write_roles_file(keys, {s: s for s in {sender, *entry["trusts"]}})
        writer.secret(entry, secret_dir, "pdmfed_encryption_key", passphrase)
        writer.secret(entry, secret_dir, "pdmfed_key_salt", salt)
        writer.secret(
            entry,
            secret_dir,
            "pdmfed_amqp_url",
            _with_credentials(options.broker_url, f"pdmfed-{sender}", broker[sender]),
        )
        if options.redis_url:
            writer.secret(entry, secret_dir, "pdmfed_redis_url", options.redis_url)
            writer.secret(entry, secret_dir, "pdmfed_redis_password", redis[sender])
        if sender == "security":
            for ds, identity in factory_ids.items():
                _public(identity, keys / "factories")
                entry["trusts_factories"].append(ds)
        if sender == "connector":
            registry = write_registry(
                out / sender / "datasites",
                {
                    spec.datasite_id: (
                        spec.url,
                        CONNECTOR_ACCOUNT_EMAIL,
                        connector_passwords[spec.datasite_id],
                    )
                    for spec in factories
                },
            )
            entry["datasite_registry"] = str(registry.relative_to(out))

    for spec in factories:
        name = f"factories/{spec.datasite_id}"
        keys, secret_dir, entry = writer.component(name, "factory", spec.datasite_id)
        factory_ids[spec.datasite_id].save(keys)
        writer.secret(entry, secret_dir, "pdmfed_datasite_admin_email", ADMIN_EMAIL)
        writer.secret(entry, secret_dir, "pdmfed_datasite_admin_password", _token())
        writer.secret(
            entry, secret_dir, "pdmfed_datasite_orchestrator_email", CONNECTOR_ACCOUNT_EMAIL
        )
        writer.secret(
            entry,
            secret_dir,
            "pdmfed_datasite_orchestrator_password",
            connector_passwords[spec.datasite_id],
        )

    if options.redis_url:
        health = _token()
        redis_dir = private_dir(out / "redis")
        with open_private(redis_dir / "users.acl") as fh:
            fh.write(render_acl_file(redis, health).encode("utf-8"))
        writer.infrastructure("redis", {"rediscli_auth": health})
    if options.broker_definitions is not None:
        _render_broker_definitions(writer, options.broker_definitions, broker)
    if options.state_url is not None:
        _state_env_files(out, options.state_url)
    writer.infrastructure("grafana", {"gf_security_admin_password": _token()})
    if options.env_files:
        writer.env_files()

    manifest = {
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "senders": {s: s for s in ENVELOPE_SENDERS},
        "factories": {ds: {"url": spec.url} for ds, spec in zip(ids, factories, strict=True)},
        "broker_users": {s: f"pdmfed-{s}" for s in ENVELOPE_SENDERS},
        "redis_users": {s: acl_user(s) for s in redis},
        "redis_health_user": HEALTH_USER if redis else None,
        "components": writer.components,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if options.owner is not None:
        _hand_over(out, options.owner)
    return manifest


def _render_broker_definitions(writer: _Writer, template: Path, broker: Mapping[str, str]) -> None:
    """``rabbitmq/definitions.json``: ``template`` with each user's hash; the admin's password."""
    admin = _token()
    env = {password_env_var(f"pdmfed-{s}"): pw for s, pw in broker.items()}
    env[password_env_var(BROKER_ADMIN)] = admin
    try:
        rendered = render(json.loads(Path(template).read_text()), env)
    except KeyError as exc:  # a template user keys init has no password for
        raise ConfigError(f"broker definitions {template}: {exc.args[0]}") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"broker definitions {template}: {exc}") from exc
    with open_private(private_dir(writer.out / "rabbitmq") / "definitions.json") as fh:
        fh.write(json.dumps(rendered, indent=2).encode("utf-8"))
    writer.infrastructure("rabbitmq", {"pdmfed_rabbitmq_admin_password": admin})


def _state_database(state_url: str) -> str:
    """The database of ``--state-url``; ConfigError unless postgresql://host[:port]/<identifier>."""
    parts = urlsplit(state_url)
    database = parts.path.strip("/")
    if parts.scheme not in ("postgresql", "postgres") or not database:
        raise ConfigError(f"--state-url {state_url!r} is not postgresql://host[:port]/database")
    roles_sql(database, {})  # refuses a name the roles' SQL could not take unquoted
    return database


def _state_env_files(out: Path, state_url: str) -> None:
    """Each service's own role's URL (``<service>/state-secrets/pdmfed_state_url``, and as
    ``<service>/state.env``); the superuser's password, which only the database keeps
    (``postgres/secrets/postgres_password``, and ``postgres/env``); ``postgres/initdb/``: the
    roles' SQL (SCRAM verifiers, no password)."""
    database = _state_database(state_url)
    passwords = {service: _token() for service in SERVICES}
    sql = roles_sql(database, passwords)
    for service, password in passwords.items():
        url = _with_credentials(state_url, role_of(service), password, what="--state-url")
        _write_secret(private_dir(out / service / "state-secrets"), "pdmfed_state_url", url)
        with open_private(out / service / "state.env") as fh:
            fh.write(f"PDMFED_STATE_URL={url}\n".encode())
    postgres = private_dir(out / "postgres")
    superuser = _token()
    _write_secret(private_dir(postgres / "secrets"), "postgres_password", superuser)
    with open_private(postgres / "env") as fh:
        fh.write(
            f"POSTGRES_USER={POSTGRES_SUPERUSER}\nPOSTGRES_DB={database}\n"
            f"POSTGRES_PASSWORD={superuser}\n".encode()
        )
    with open_private(private_dir(postgres / "initdb") / ROLES_SQL_FILE) as fh:
        fh.write(sql.encode("utf-8"))


#: Files their servers read under their images' own users (uids differ between images): they
#: hold password hashes only, so they are readable by all, in traversable, unlistable directories.
_SERVER_READABLE = (
    "rabbitmq/definitions.json",
    "redis/users.acl",
    f"postgres/initdb/{ROLES_SQL_FILE}",
)
#: Directories a server lists (the postgres image runs every file of its initdb folder; one it
#: cannot list would be skipped without a word). They hold hashes only.
_SERVER_LISTABLE = ("postgres/initdb",)
#: Secrets a server reads under its image's own user (Redis's health check, Grafana): readable
#: by the owner's group, which compose adds to those containers (group_add); nothing for others.
_SERVER_GROUP_READABLE = ("redis/secrets", "grafana/secrets")


def _hand_over(out: Path, owner: tuple[int, int]) -> None:
    """Every file and directory to ``owner`` (the images' user), modes kept private: 0600 files
    in 0700 directories; the servers' hash-only files readable by all, their own passwords by
    the owner's group."""
    for path in [out, *sorted(out.rglob("*"))]:
        os.chown(path, *owner)
    for name in _SERVER_READABLE:
        path = out / name
        if path.exists():
            path.chmod(0o644)
            for directory in path.relative_to(out).parents:
                (out / directory).chmod(0o711)
    for name in _SERVER_LISTABLE:
        if (out / name).exists():
            (out / name).chmod(0o755)
    for name in _SERVER_GROUP_READABLE:
        if (out / name).is_dir():
            (out / name).chmod(0o750)
            for path in (out / name).iterdir():
                path.chmod(0o640)


def public_key_files(keys_dir: Path) -> Mapping[str, Path]:
    """``<sender>.pub`` files directly in ``keys_dir`` by sender (tests and `keys` listing)."""
    return {p.stem: p for p in sorted(Path(keys_dir).glob("*.pub"))}
