"""Secrets can come from files (PDMFED_SECRETS_DIR), as compose/k8s secrets mount them."""

from __future__ import annotations

import os
import secrets

import pytest
from federation.config import Settings
from federation.errors import ConfigError


def test_when_a_secrets_dir_is_set__settings_read_one_file_per_variable(tmp_path, monkeypatch):
    passphrase = secrets.token_urlsafe(24)
    (tmp_path / "pdmfed_encryption_key").write_text(passphrase)
    (tmp_path / "pdmfed_key_salt").write_text(secrets.token_hex(16))
    (tmp_path / "pdmfed_datasite_orchestrator_password").write_text("p" * 20)
    monkeypatch.setenv("PDMFED_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("PDMFED_ENCRYPTION_KEY", raising=False)
    settings = Settings()
    assert settings.passphrase() == passphrase
    assert settings.datasite_orchestrator_password.get_secret_value() == "p" * 20
    settings.validate_secrets()


def test_when_the_environment_also_sets_a_value__the_environment_wins(tmp_path, monkeypatch):
    (tmp_path / "pdmfed_amqp_url").write_text("amqp://u:p@rabbitmq:5672/pdmfed")
    monkeypatch.setenv("PDMFED_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("PDMFED_AMQP_URL", "")
    assert not Settings().amqp_url


def test_when_the_secrets_dir_does_not_exist__settings_refuse_with_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PDMFED_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="PDMFED_SECRETS_DIR .*missing"):
        Settings()


def test_when_the_files_are_named_like_the_variables__settings_still_read_them(
    tmp_path, monkeypatch
):
    """A Kubernetes Secret created with --from-env-file has keys PDMFED_...; docs/deploy.md
    says such a Secret still loads when mounted."""
    passphrase = secrets.token_urlsafe(24)
    (tmp_path / "PDMFED_ENCRYPTION_KEY").write_text(passphrase)
    (tmp_path / "PDMFED_STATE_URL").write_text("postgresql://pdmfed_security:pw@postgres/pdmfed")
    monkeypatch.setenv("PDMFED_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("PDMFED_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("PDMFED_STATE_URL", raising=False)
    settings = Settings()
    assert settings.passphrase() == passphrase
    assert settings.state_url == "postgresql://pdmfed_security:pw@postgres/pdmfed"


def test_when_several_directories_are_named__settings_read_all_and_a_later_one_wins(
    tmp_path, monkeypatch
):
    """compose's replicas override adds a service's database URL as a second directory."""
    first, second = tmp_path / "secrets", tmp_path / "state-secrets"
    first.mkdir()
    second.mkdir()
    passphrase = secrets.token_urlsafe(24)
    (first / "pdmfed_encryption_key").write_text(passphrase)
    (first / "pdmfed_state_url").write_text("postgresql://old:pw@postgres/pdmfed")
    (second / "pdmfed_state_url").write_text("postgresql://pdmfed_security:pw@postgres/pdmfed")
    monkeypatch.setenv("PDMFED_SECRETS_DIR", f"{first}:{second}")
    monkeypatch.delenv("PDMFED_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("PDMFED_STATE_URL", raising=False)
    settings = Settings()
    assert settings.passphrase() == passphrase
    assert settings.state_url == "postgresql://pdmfed_security:pw@postgres/pdmfed"


def test_when_one_of_several_directories_is_missing__settings_refuse_with_its_name(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PDMFED_SECRETS_DIR", f"{tmp_path}:{tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match="PDMFED_SECRETS_DIR .*missing"):
        Settings()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")
def test_when_the_secrets_dir_is_not_readable__settings_say_so_and_by_whom(tmp_path, monkeypatch):
    """A container whose user does not own its mounted secrets (keys init without --owner)."""
    (tmp_path / "secrets").mkdir(mode=0o000)
    monkeypatch.setenv("PDMFED_SECRETS_DIR", str(tmp_path / "secrets"))
    try:
        with pytest.raises(ConfigError, match=rf"not readable by uid {os.geteuid()}"):
            Settings()
    finally:
        (tmp_path / "secrets").chmod(0o700)
