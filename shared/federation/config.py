"""Runtime settings from the environment (prefix PDMFED_), read at startup, never at import."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SecretsSettingsSource, SettingsConfigDict

from federation.errors import ConfigError

__all__ = ["Settings", "load_settings", "DEMO_PASSPHRASE", "DEMO_SALT"]

#: Used only when ``demo=True``; a non-demo run refuses these.
DEMO_PASSPHRASE = "pdmfed-demo-only-passphrase"
DEMO_SALT = "pdmfed-demo-salt"

_MIN_PASSPHRASE_CHARS = 16
#: The salt need not be secret, but a shared template salt would make every deployment's keys
#: derive alike: random, and not a placeholder.
_MIN_SALT_CHARS = 8
_MIN_SALT_GUESSES_LOG10 = 8.0


class Settings(BaseSettings):
    """Everything a service or the orchestrator reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="PDMFED_", extra="ignore")

    amqp_url: str | None = None
    #: How long an unreachable broker is retried (with backoff) at start-up before giving up.
    amqp_connect_give_up_s: float = 60.0
    #: Shared replay store: redis:// or rediss:// (TLS; CA via ?ssl_ca_certs=/path).
    redis_url: str | None = None
    #: This role's Redis ACL password (user pdmfed-<role>), unless the URL carries credentials.
    redis_password: SecretStr | None = None
    encryption_key: SecretStr | None = None
    key_salt: str | None = None
    key_id: str = "k1"
    #: Older passphrases still accepted for opening, as "key_id=passphrase,key_id=passphrase".
    previous_keys: SecretStr | None = None
    metrics_port: int = 0
    max_message_bytes: int = 8 * 1024 * 1024
    max_tensor_bytes: int = 2 * 1024 * 1024 * 1024
    #: The largest chunked update reassembled until a campaign's model sets a tighter limit.
    max_update_bytes: int = 2 * 1024 * 1024 * 1024
    message_ttl_s: float = 600.0
    clock_skew_s: float = 30.0
    require_signatures: bool = True
    #: Declare exchanges/queues at start-up; off where the broker loads them from definitions
    #: (least-privilege users cannot configure other services' queues).
    declare_topology: bool = True
    #: Prefix of the exchange and queue names (tests and side-by-side deployments use their own).
    topology_prefix: str = "pdmfed"
    state_dir: Path = Path(".pdmfed")
    #: Service state in PostgreSQL (postgresql://...; one schema per service, shared by its
    #: replicas); unset: one SQLite file per service in state_dir.
    state_url: str | None = None
    #: Where a PostgreSQL-backed service keeps large values as files (every replica mounts it);
    #: unset: state_dir/blobs.
    blob_dir: Path | None = None
    #: Claim check: a directory every service mounts; large updates (update.raw/screened) are
    #: sealed into it once and their messages carry a reference + SHA-256 (docs/replicas.md).
    #: Unset: every message carries its bytes (the default).
    claim_dir: Path | None = None
    #: With a claim directory: the global model's messages (round.open, round.completed) travel
    #: by reference too. Set it only where the orchestrator mounts the claim directory as well
    #: (it consumes both); an orchestrator without it refuses such a round with that reason.
    claim_models: bool = False
    #: Directory of Ed25519 keys (<sender>.key private, <sender>.pub public).
    keys_dir: Path | None = None
    service_id: str | None = None
    #: Sender id -> role, as "connector-1=connector,connector-2=connector", in addition to
    #: PDMFED_KEYS_DIR/senders.json (written by `pdmfed keys init`).
    sender_roles: str | None = None
    log_level: str = "INFO"
    demo: bool = False
    datasite_admin_email: str = "admin@pdm-factory.com"
    datasite_admin_password: SecretStr | None = None
    #: The connector's datasite registry (id -> URL, account, password file); required by the
    #: connector outside the demo (federation.datasite_registry).
    datasite_registry: Path | None = None
    #: The data-scientist account a factory creates for the connector (its own password).
    datasite_orchestrator_email: str | None = None
    datasite_orchestrator_password: SecretStr | None = None

    @classmethod
    def settings_customise_sources(  # noqa: PLR0913 - pydantic-settings' signature
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):  # noqa: ANN001, ANN206
        """Arguments, then the environment, then PDMFED_SECRETS_DIR: one file per setting, named
        like its variable in lower case (``pdmfed_encryption_key``), as compose/k8s secrets mount.
        Several directories may be named, separated by ``:`` (os.pathsep); a later one wins."""
        value = os.environ.get("PDMFED_SECRETS_DIR")
        directories = [d for d in (value or "").split(os.pathsep) if d]
        if not directories:
            return init_settings, env_settings, dotenv_settings
        for directory in directories:
            if not Path(directory).is_dir():
                raise ConfigError(f"PDMFED_SECRETS_DIR {directory} is not a directory")
            if not os.access(directory, os.R_OK | os.X_OK):
                raise ConfigError(
                    f"PDMFED_SECRETS_DIR {directory} is not readable by uid {os.geteuid()}"
                    " (`pdmfed keys init --owner` must name the user that reads it)"
                )
        files = SecretsSettingsSource(settings_cls, secrets_dir=directories)
        return init_settings, env_settings, dotenv_settings, files

    @property
    def freshness_window_s(self) -> float:
        """How old a message may be: the queue's TTL plus clock skew."""
        return self.message_ttl_s + self.clock_skew_s

    @property
    def inbox_retention_s(self) -> float:
        """How long a handled message id is remembered: the freshness window plus the skew a
        timestamp may be ahead; a copy of an older message is refused as expired."""
        return self.freshness_window_s + self.clock_skew_s

    def passphrase(self) -> str:
        """The sealing passphrase; the demo one only in demo mode."""
        if self.encryption_key is not None:
            return self.encryption_key.get_secret_value()
        if self.demo:
            return DEMO_PASSPHRASE
        raise ConfigError("PDMFED_ENCRYPTION_KEY is not set (required outside `pdmfed demo`)")

    def salt(self) -> str:
        """The key-derivation salt; the demo one only in demo mode."""
        if self.key_salt:
            return self.key_salt
        if self.demo:
            return DEMO_SALT
        raise ConfigError("PDMFED_KEY_SALT is not set (required outside `pdmfed demo`)")

    def check_signature_policy(self) -> None:
        """Unsigned messages are for ``pdmfed demo`` only: without signatures any holder of
        the shared key could send under any service's name."""
        if not self.require_signatures and not self.demo:
            raise ConfigError(
                "PDMFED_REQUIRE_SIGNATURES=false is refused outside `pdmfed demo`: without"
                " signatures any holder of the shared key can send as any service"
            )

    def validate_secrets(self) -> None:
        """Refuse to start a non-demo run on missing, placeholder or weak secrets; say why."""
        self.check_signature_policy()
        if self.demo:
            return
        from federation.crypto.keys import parse_previous_keys
        from federation.crypto.strength import check_secret, check_url_password

        phrase = self.passphrase()
        if phrase == DEMO_PASSPHRASE:
            raise ConfigError("PDMFED_ENCRYPTION_KEY is the public demo passphrase")
        check_secret(phrase, "PDMFED_ENCRYPTION_KEY", min_chars=_MIN_PASSPHRASE_CHARS)
        check_secret(
            self.salt(),
            "PDMFED_KEY_SALT",
            min_chars=_MIN_SALT_CHARS,
            min_guesses_log10=_MIN_SALT_GUESSES_LOG10,
        )
        previous = self.previous_keys.get_secret_value() if self.previous_keys is not None else None
        for key_id, old in parse_previous_keys(previous).items():
            check_secret(old, f"PDMFED_PREVIOUS_KEYS ({key_id})", min_chars=_MIN_PASSPHRASE_CHARS)
        if self.datasite_admin_password is not None:
            check_secret(
                self.datasite_admin_password.get_secret_value(), "PDMFED_DATASITE_ADMIN_PASSWORD"
            )
        check_url_password(self.amqp_url, "PDMFED_AMQP_URL")
        check_url_password(self.state_url, "PDMFED_STATE_URL")
        self._validate_redis()

    def _validate_redis(self) -> None:
        """The replay store must require auth: a role user and a real password."""
        from urllib.parse import unquote, urlsplit

        from federation.crypto.strength import check_secret, check_url_password

        if not self.redis_url:
            return
        try:
            parts = urlsplit(self.redis_url)
            url_password = parts.password
        except ValueError as exc:
            raise ConfigError("PDMFED_REDIS_URL is not a valid URL") from exc
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("PDMFED_REDIS_URL must be redis://, rediss:// (TLS) or unix://")
        check_url_password(self.redis_url, "PDMFED_REDIS_URL")
        if self.redis_password is not None:
            check_secret(self.redis_password.get_secret_value(), "PDMFED_REDIS_PASSWORD")
        elif url_password:
            check_secret(unquote(url_password), "the password in PDMFED_REDIS_URL")
        else:
            raise ConfigError(
                "PDMFED_REDIS_URL has no credentials: Redis must require auth "
                "(set PDMFED_REDIS_PASSWORD, the role's ACL password)"
            )


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]
