"""Redis auth is required outside the demo; the ACL file confines each role to its own keys."""

from __future__ import annotations

import secrets

import pytest
from federation.config import Settings
from federation.crypto.redis_acl import REDIS_ROLES, render_acl_file, seen_namespace
from federation.crypto.replay import RedisSeenStore, seen_store_from_settings
from federation.errors import ConfigError


def _settings(**kw) -> Settings:
    return Settings(encryption_key=secrets.token_urlsafe(24), key_salt=secrets.token_hex(16), **kw)


def test_when_a_service_is_pointed_at_redis_without_credentials__it_refuses_to_start():
    with pytest.raises(ConfigError, match="PDMFED_REDIS_URL.*no credentials"):
        _settings(redis_url="redis://redis:6379/0").validate_secrets()


def test_when_the_redis_password_is_weak__it_is_refused_by_name():
    with pytest.raises(ConfigError, match="PDMFED_REDIS_PASSWORD"):
        _settings(redis_url="redis://redis:6379/0", redis_password="redis123").validate_secrets()


@pytest.mark.parametrize("url", ["http://redis:6379/0", "redis-cluster://x"])
def test_when_the_redis_url_has_another_scheme__it_is_refused(url):
    with pytest.raises(ConfigError, match="PDMFED_REDIS_URL"):
        _settings(redis_url=url, redis_password=secrets.token_urlsafe(24)).validate_secrets()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_when_credentials_are_set__plain_and_tls_urls_are_accepted(scheme):
    _settings(
        redis_url=f"{scheme}://redis:6379/0", redis_password=secrets.token_urlsafe(24)
    ).validate_secrets()
    _settings(
        redis_url=f"{scheme}://pdmfed-security:{secrets.token_urlsafe(24)}@redis:6379/0"
    ).validate_secrets()


def test_when_a_role_opens_its_seen_store__it_uses_its_role_user_and_namespace():
    password = secrets.token_urlsafe(24)
    store = seen_store_from_settings(
        Settings(redis_url="redis://redis:6379/0", redis_password=password), role="security"
    )
    assert isinstance(store, RedisSeenStore) and store.namespace == seen_namespace("security")
    kwargs = store._client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("pdmfed-security", password)


def test_when_rendered__the_acl_file_disables_the_default_user_and_holds_no_password():
    passwords = {role: secrets.token_urlsafe(24) for role in REDIS_ROLES}
    text = render_acl_file(passwords)
    lines = text.splitlines()
    assert lines[0].startswith("user default off")
    for role, password in passwords.items():
        (line,) = [ln for ln in lines if ln.startswith(f"user pdmfed-{role} ")]
        assert f" ~{seen_namespace(role)}:* " in line and " -@all " in line and "~*" not in line
        assert password not in text
    with pytest.raises(ConfigError):
        render_acl_file({"security": "dev-only-redis-password-change-me"})
