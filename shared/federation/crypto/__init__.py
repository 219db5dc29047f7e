"""Crypto: key derivation and rotation, AES-256-GCM sealing, Ed25519 signatures, replay guard."""

from federation.crypto.keys import KeyRing, derive_master_key, derive_subkey
from federation.crypto.replay import (
    InMemorySeenStore,
    RedisSeenStore,
    ReplayGuard,
    SeenStore,
    SeenStoreUnavailable,
    seen_store_from_settings,
)
from federation.crypto.sealer import Opened, Sealer
from federation.crypto.signing import SigningIdentity, TrustStore, sign_digest, verify_digest

__all__ = [
    "InMemorySeenStore",
    "KeyRing",
    "Opened",
    "RedisSeenStore",
    "ReplayGuard",
    "Sealer",
    "SeenStore",
    "SeenStoreUnavailable",
    "SigningIdentity",
    "TrustStore",
    "derive_master_key",
    "derive_subkey",
    "seen_store_from_settings",
    "sign_digest",
    "verify_digest",
]
