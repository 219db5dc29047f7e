"""Weak secrets are refused at start-up: shipped placeholders, repeats, sequences, short values."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from federation.config import Settings
from federation.crypto.strength import check_secret, check_url_password
from federation.errors import ConfigError

ENV_EXAMPLE = Path(__file__).resolve().parents[3] / ".env.example"


def _example_values() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _settings(**kw: str) -> Settings:
    base = {"encryption_key": secrets.token_urlsafe(24), "key_salt": secrets.token_hex(16)}
    return Settings(**{**base, **kw})


@pytest.mark.parametrize(
    ("var", "value"),
    # the placeholders .env.example shipped before secrets moved to per-component files
    [
        ("PDMFED_ENCRYPTION_KEY", "replace-with-a-long-random-passphrase"),
        ("PDMFED_KEY_SALT", "replace-with-a-random-salt"),
    ],
)
def test_when_a_service_is_given_the_env_example_placeholder__it_refuses_to_start(var, value):
    field = "encryption_key" if var == "PDMFED_ENCRYPTION_KEY" else "key_salt"
    with pytest.raises(ConfigError, match=f"{var}.*placeholder") as err:
        _settings(**{field: value}).validate_secrets()
    assert value not in str(err.value)


@pytest.mark.parametrize(
    "weak",
    [
        "a" * 16,
        "abcdefghijklmnopqrstu",
        "1234567890123456",
        "qwertyuiopasdfghjkl",
        "passwordpassword1",
    ],
)
def test_when_the_passphrase_has_low_entropy__the_service_refuses_and_never_echoes_it(weak):
    with pytest.raises(ConfigError, match="PDMFED_ENCRYPTION_KEY is too weak") as err:
        _settings(encryption_key=weak).validate_secrets()
    assert weak not in str(err.value)


@pytest.mark.parametrize("weak", ["aaaaaaaa", "12345678", "saltsalt1"])
def test_when_the_salt_has_low_entropy__the_service_refuses(weak):
    with pytest.raises(ConfigError, match="PDMFED_KEY_SALT is too weak"):
        _settings(key_salt=weak).validate_secrets()


def test_when_secrets_are_random__the_service_accepts_them():
    _settings().validate_secrets()
    _settings(previous_keys=f"k0={secrets.token_urlsafe(24)}").validate_secrets()


def test_when_an_older_key_is_weak__it_is_refused_too():
    with pytest.raises(ConfigError, match=r"PDMFED_PREVIOUS_KEYS \(k0\)"):
        _settings(previous_keys="k0=" + "b" * 20).validate_secrets()


def test_when_the_broker_url_carries_a_shipped_placeholder_password__it_is_refused():
    password = _example_values()["PDMFED_RABBITMQ_PASSWORD_CONNECTOR"]
    url = f"amqp://pdmfed-connector:{password}@rabbitmq:5672/pdmfed"
    with pytest.raises(ConfigError, match="PDMFED_AMQP_URL") as err:
        _settings(amqp_url=url).validate_secrets()
    assert password not in str(err.value)
    check_url_password(
        f"amqp://pdmfed-connector:{secrets.token_urlsafe(24)}@rabbitmq:5672/pdmfed", "x"
    )
    check_url_password("redis://127.0.0.1:6379/0", "x")


def test_when_the_state_database_url_carries_a_placeholder_password__it_is_refused():
    url = "postgresql://pdmfed:changeme@postgres:5432/pdmfed"
    with pytest.raises(ConfigError, match="PDMFED_STATE_URL") as err:
        _settings(state_url=url).validate_secrets()
    assert "changeme" not in str(err.value)


def test_when_the_demo_runs__its_public_defaults_are_allowed():
    Settings(demo=True).validate_secrets()


def test_when_checking_a_secret__limits_are_the_callers():
    assert check_secret("Kq7#vR2p", "pin", min_chars=8, min_guesses_log10=7) == "Kq7#vR2p"
    with pytest.raises(ConfigError, match="pin is too weak: 3 characters"):
        check_secret("Kq7", "pin", min_chars=8)
