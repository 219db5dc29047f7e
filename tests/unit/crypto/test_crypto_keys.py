"""Key derivation and the key ring: PBKDF2 once per process, HKDF subkeys, rotation."""

from __future__ import annotations

import hashlib
import time

import pytest
from federation.config import Settings
from federation.crypto import keys
from federation.crypto.keys import KeyRing, derive_master_key, derive_subkey, parse_previous_keys
from federation.errors import ConfigError, UnknownKeyError
from pydantic import SecretStr


def test_when_master_key_is_derived__it_is_pbkdf2_sha256_600k_and_cached():
    phrase, salt = "crypto-test-passphrase-xyz", "crypto-test-salt"
    started = time.perf_counter()
    key = derive_master_key(phrase, salt)
    first = time.perf_counter() - started
    assert key == hashlib.pbkdf2_hmac("sha256", phrase.encode(), salt.encode(), 600_000, 32)
    started = time.perf_counter()
    assert derive_master_key(phrase, salt) == key
    assert time.perf_counter() - started < first / 20  # cached, not recomputed
    assert keys.PBKDF2_ITERATIONS == 600_000


def test_when_purposes_differ__subkeys_differ_and_are_32_bytes():
    master = derive_master_key("p" * 20, "s" * 10, iterations=1000)
    a, b = derive_subkey(master, "aead:k1"), derive_subkey(master, "aead:k2")
    assert len(a) == len(b) == 32 and a != b and a != master
    assert derive_subkey(master, "aead:k1") == a


@pytest.mark.parametrize("bad", [("", "salt"), ("phrase", ""), ("phrase", "salt", 0)])
def test_when_inputs_are_empty_or_iterations_invalid__config_error(bad):
    with pytest.raises(ConfigError):
        derive_master_key(*bad)


def test_when_key_is_rotated__new_ring_opens_old_key_id_and_seals_with_new():
    old = KeyRing.from_passphrase("old-passphrase-123456", "salt-1234", "k1", iterations=1000)
    new = KeyRing.from_passphrase(
        "new-passphrase-123456",
        "salt-1234",
        "k2",
        {"k1": "old-passphrase-123456"},
        iterations=1000,
    )
    assert new.active_id == "k2" and new.key_ids == ["k1", "k2"]
    assert new.opening_key("k1") == old.sealing_key()
    assert new.sealing_key() != old.sealing_key()
    with pytest.raises(UnknownKeyError):
        old.opening_key("k2")
    assert "k1" in repr(new) and old.sealing_key().hex() not in repr(new)


def test_when_ring_is_inconsistent__config_error():
    with pytest.raises(ConfigError):
        KeyRing("k9", {"k1": bytes(32)})
    with pytest.raises(ConfigError):
        KeyRing("k1", {"k1": bytes(16)})
    with pytest.raises(ConfigError):
        KeyRing("bad id!", {"bad id!": bytes(32)})


def test_when_previous_keys_are_parsed__bad_items_fail_without_echoing_secrets():
    assert parse_previous_keys("k0=abc=def, k1=ghi") == {"k0": "abc=def", "k1": "ghi"}
    assert parse_previous_keys(None) == {}
    with pytest.raises(ConfigError) as err:
        parse_previous_keys("k0-no-separator-secret")
    assert "secret" not in str(err.value)


def test_when_ring_comes_from_settings__it_uses_key_id_and_previous_keys():
    settings = Settings(
        encryption_key=SecretStr("a-long-enough-passphrase"),
        key_salt="salt-1234",
        key_id="k2",
        previous_keys=SecretStr("k1=an-older-passphrase"),
    )
    ring = KeyRing.from_settings(settings)
    assert ring.active_id == "k2" and ring.key_ids == ["k1", "k2"]
    assert ring.sealing_key() == derive_subkey(
        derive_master_key("a-long-enough-passphrase", "salt-1234"), "aead:k2"
    )
