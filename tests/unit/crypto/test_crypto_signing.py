"""Ed25519 identities, key files, the trust store and factory digest signatures."""

from __future__ import annotations

import stat

import pytest
from federation.crypto.signing import SigningIdentity, TrustStore, sign_digest, verify_digest
from federation.errors import AuthError, ConfigError


def test_when_identity_signs__trust_store_verifies_and_rejects_tampering(identity, trust):
    sig = identity.sign(b"hello")
    trust.verify("connector-0", b"hello", sig)
    with pytest.raises(AuthError, match="invalid signature"):
        trust.verify("connector-0", b"hellO", sig)
    with pytest.raises(AuthError, match="not in the trust store"):
        trust.verify("security-0", b"hello", sig)
    with pytest.raises(AuthError, match="missing"):
        trust.verify("connector-0", b"hello", None)


def test_when_key_files_are_created__private_key_is_0600_and_reloads(tmp_path):
    first = SigningIdentity.load_or_create(tmp_path, "aggregator-0")
    key_file = tmp_path / "aggregator-0.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = SigningIdentity.load_or_create(tmp_path, "aggregator-0")
    assert again.public_bytes() == first.public_bytes()
    SigningIdentity.load_or_create(tmp_path, "security-0")
    store = TrustStore.from_dir(tmp_path)
    assert store.senders == ["aggregator-0", "security-0"]
    store.verify("aggregator-0", b"x", again.sign(b"x"))


def test_when_key_file_is_garbage_or_sender_is_a_path__config_error(tmp_path):
    (tmp_path / "bad.key").write_bytes(b"not a pem")
    with pytest.raises(ConfigError):
        SigningIdentity.load(tmp_path, "bad")
    with pytest.raises(ConfigError):
        SigningIdentity.generate("../etc/passwd")
    (tmp_path / "bad.pub").write_bytes(b"junk")
    with pytest.raises(ConfigError):
        TrustStore.from_dir(tmp_path)
    with pytest.raises(ConfigError):
        TrustStore({"x": b"short"})


def test_when_factory_signs_a_tensor_digest__only_that_digest_verifies(identity, trust):
    digest = "ab" * 32
    sig = sign_digest(identity, digest)
    verify_digest(trust, "connector-0", digest, sig)
    with pytest.raises(AuthError):
        verify_digest(trust, "connector-0", "cd" * 32, sig)
    with pytest.raises(AuthError):
        verify_digest(trust, "connector-0", "zz" * 32, sig)
    with pytest.raises(AuthError):
        trust.verify("connector-0", digest.encode(), sig)  # domain-separated from raw bytes
