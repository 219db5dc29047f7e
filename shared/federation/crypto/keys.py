"""Key derivation (PBKDF2 once per process, HKDF per purpose) and the key ring for rotation."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federation.errors import ConfigError, UnknownKeyError

__all__ = [
    "PBKDF2_ITERATIONS",
    "KEY_LEN",
    "derive_master_key",
    "derive_subkey",
    "parse_previous_keys",
    "KeyRing",
]

PBKDF2_ITERATIONS = 600_000
KEY_LEN = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _as_bytes(value: str | bytes, what: str) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes) or not value:
        raise ConfigError(f"{what} must be a non-empty string")
    return value


@functools.lru_cache(maxsize=16)
def _pbkdf2(passphrase: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, dklen=KEY_LEN)


def derive_master_key(
    passphrase: str | bytes, salt: str | bytes, iterations: int = PBKDF2_ITERATIONS
) -> bytes:
    """PBKDF2-HMAC-SHA256 master key (32 B); computed once per process per input."""
    if type(iterations) is not int or iterations < 1:
        raise ConfigError("PBKDF2 iterations must be a positive integer")
    return _pbkdf2(_as_bytes(passphrase, "passphrase"), _as_bytes(salt, "salt"), iterations)


def derive_subkey(master: bytes, purpose: str) -> bytes:
    """An independent 32-byte key for one purpose (HKDF-SHA256, info = purpose)."""
    if not isinstance(master, bytes) or len(master) < KEY_LEN:
        raise ConfigError("master key must be at least 32 bytes")
    info = b"pdmfed/v1/" + _as_bytes(purpose, "purpose")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=info).derive(master)


def parse_previous_keys(text: str | None) -> dict[str, str]:
    """Parse ``"key_id=passphrase,key_id=passphrase"`` (PDMFED_PREVIOUS_KEYS)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key_id, sep, phrase = item.partition("=")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.fullmatch(key_id) or not phrase:
            # Never echo the item: it holds a passphrase.
            raise ConfigError("PDMFED_PREVIOUS_KEYS must look like 'key_id=passphrase,...'")
        out[key_id] = phrase
    return out


class KeyRing:
    """AEAD keys by key_id: one active key seals, every key held may open."""

    def __init__(self, active_id: str, keys: Mapping[str, bytes]) -> None:
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
                raise ConfigError(f"invalid key_id {key_id!r} (1-64 of A-Z a-z 0-9 . _ -)")
            if not isinstance(key, bytes) or len(key) != KEY_LEN:
                raise ConfigError(f"key {key_id!r} must be {KEY_LEN} bytes")
        if active_id not in keys:
            raise ConfigError(f"active key_id {active_id!r} is not in the key ring")
        self.active_id = active_id
        self._keys = dict(keys)
        self._aead: dict[str, AESGCM] = {}

    def __repr__(self) -> str:  # never show key material
        return f"KeyRing(active_id={self.active_id!r}, key_ids={sorted(self._keys)!r})"

    @property
    def key_ids(self) -> list[str]:
        """Every key id this ring can open."""
        return sorted(self._keys)

    def sealing_key(self) -> bytes:
        """The active key (its id is ``active_id``)."""
        return self._keys[self.active_id]

    def opening_key(self, key_id: str) -> bytes:
        """The key for ``key_id``; UnknownKeyError when this ring does not hold it."""
        try:
            return self._keys[key_id]
        except (KeyError, TypeError):
            raise UnknownKeyError(f"unknown key_id {key_id!r}") from None

    def aead(self, key_id: str) -> AESGCM:
        """A cached AES-256-GCM object for ``key_id``."""
        aead = self._aead.get(key_id)
        if aead is None:
            aead = self._aead[key_id] = AESGCM(self.opening_key(key_id))
        return aead

    @classmethod
    def from_passphrase(
        cls,
        passphrase: str | bytes,
        salt: str | bytes,
        key_id: str = "k1",
        previous: Mapping[str, str | bytes] | None = None,
        *,
        iterations: int = PBKDF2_ITERATIONS,
    ) -> KeyRing:
        """Derive the active key and any previous (still accepted) keys from passphrases."""
        phrases = {**(previous or {}), key_id: passphrase}
        keys = {
            kid: derive_subkey(derive_master_key(p, salt, iterations), f"aead:{kid}")
            for kid, p in phrases.items()
        }
        return cls(key_id, keys)

    @classmethod
    def from_settings(cls, settings: Any) -> KeyRing:
        """The ring from Settings: PDMFED_ENCRYPTION_KEY/KEY_SALT/KEY_ID/PREVIOUS_KEYS."""
        previous = settings.previous_keys
        text = previous.get_secret_value() if previous is not None else None
        return cls.from_passphrase(
            settings.passphrase(), settings.salt(), settings.key_id, parse_previous_keys(text)
        )
