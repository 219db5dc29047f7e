"""Fixtures for crypto tests: fast key rings, identities, and a sealer factory."""

from __future__ import annotations

import os

import pytest
from federation.crypto import KeyRing, ReplayGuard, Sealer, SigningIdentity, TrustStore
from federation.crypto.replay import InMemorySeenStore


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing("k1", {"k1": os.urandom(32)})


@pytest.fixture
def identity() -> SigningIdentity:
    return SigningIdentity.generate("connector-0")


@pytest.fixture
def trust(identity: SigningIdentity) -> TrustStore:
    return TrustStore({"connector-0": identity.public_bytes()})


@pytest.fixture
def make_sealer(keyring, identity, trust):
    """Build a sealer; defaults: signed by connector-0, which the trust store knows."""

    def make(**over) -> Sealer:
        kw = dict(sender="connector-0", identity=identity, trust=trust)
        kw.update(over)
        if "replay" not in kw:
            kw["replay"] = ReplayGuard(InMemorySeenStore(), kw.pop("window_s", 630.0))
        return Sealer(
            over.pop("keyring", keyring), **{k: v for k, v in kw.items() if k != "keyring"}
        )

    return make
