"""Ed25519 sender identities, the trust store of public keys, and factory digest signatures."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.errors import AuthError, ConfigError

__all__ = ["SigningIdentity", "TrustStore", "sign_digest", "verify_digest", "check_sender_name"]

_SENDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}")
_DIGEST_DOMAIN = b"pdmfed-digest-v1\x00"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def check_sender_name(sender: str) -> str:
    """A sender id usable as a file name; ConfigError otherwise."""
    if not isinstance(sender, str) or not _SENDER.fullmatch(sender):
        raise ConfigError(f"invalid sender id {sender!r} (1-128 of A-Z a-z 0-9 _ . @ -)")
    return sender


class SigningIdentity:
    """A sender id with its Ed25519 private key."""

    def __init__(self, sender: str, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigError("private_key must be an Ed25519 private key")
        self.sender = check_sender_name(sender)
        self._key = private_key

    def __repr__(self) -> str:
        return f"SigningIdentity(sender={self.sender!r})"

    @classmethod
    def generate(cls, sender: str) -> SigningIdentity:
        """A fresh random identity."""
        return cls(sender, Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        """64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def private_pem(self) -> bytes:
        """PKCS#8 PEM of the private key (unencrypted: protect the file, not the bytes)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the public key."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, sender: str, pem: bytes) -> SigningIdentity:
        """Load a PKCS#8 PEM private key."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"private key of {sender!r} is not a valid PEM key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"private key of {sender!r} is not Ed25519")
        return cls(sender, key)

    def save(self, keys_dir: str | Path) -> tuple[Path, Path]:
        """Write ``<sender>.key`` (mode 0600, never overwritten) and ``<sender>.pub``."""
        keys_dir = Path(keys_dir)
        keys_dir.mkdir(parents=True, exist_ok=True)
        key_path = keys_dir / f"{self.sender}.key"
        pub_path = keys_dir / f"{self.sender}.pub"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.private_pem())
        tmp = pub_path.with_suffix(f".pub.{os.getpid()}.tmp")
        tmp.write_bytes(self.public_pem())
        os.replace(tmp, pub_path)
        return key_path, pub_path

    @classmethod
    def load(cls, keys_dir: str | Path, sender: str) -> SigningIdentity:
        """Read ``<keys_dir>/<sender>.key``."""
        path = Path(keys_dir) / f"{check_sender_name(sender)}.key"
        try:
            return cls.from_pem(sender, path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc

    @classmethod
    def load_or_create(cls, keys_dir: str | Path, sender: str) -> SigningIdentity:
        """Load the sender's key from ``keys_dir``, creating it (0600) on first use."""
        path = Path(keys_dir) / f"{check_sender_name(sender)}.key"
        if path.exists():
            return cls.load(keys_dir, sender)
        identity = cls.generate(sender)
        try:
            identity.save(keys_dir)
        except FileExistsError:  # another process created it first: use theirs
            return cls.load(keys_dir, sender)
        return identity


class TrustStore:
    """Public keys of the senders this process believes: sender id -> Ed25519 key."""

    def __init__(self, keys: Mapping[str, bytes | Ed25519PublicKey] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for sender, key in (keys or {}).items():
            self.add(sender, key)

    def __contains__(self, sender: object) -> bool:
        return sender in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def senders(self) -> list[str]:
        """Every trusted sender id."""
        return sorted(self._keys)

    def add(self, sender: str, key: bytes | Ed25519PublicKey) -> None:
        """Trust ``sender``'s public key (raw 32 bytes or a key object)."""
        if isinstance(key, bytes | bytearray):
            try:
                key = Ed25519PublicKey.from_public_bytes(bytes(key))
            except ValueError as exc:
                raise ConfigError(f"public key of {sender!r} is not 32 raw bytes") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"public key of {sender!r} must be Ed25519")
        self._keys[check_sender_name(sender)] = key

    def replace_with(self, other: TrustStore) -> None:
        """Trust exactly ``other``'s keys from now on (one assignment: readers never see a mix)."""
        self._keys = dict(other._keys)

    def verify(self, sender: str, data: bytes, signature: bytes | None) -> None:
        """AuthError unless ``signature`` is ``sender``'s valid signature of ``data``."""
        key = self._keys.get(sender) if isinstance(sender, str) else None
        if key is None:
            raise AuthError(f"sender {sender!r} is not in the trust store")
        if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
            raise AuthError(f"missing or malformed signature from {sender!r}")
        try:
            key.verify(bytes(signature), data)
        except InvalidSignature:
            raise AuthError(f"invalid signature from {sender!r}") from None

    @classmethod
    def from_dir(cls, keys_dir: str | Path) -> TrustStore:
        """Trust every ``<sender>.pub`` (PEM) in ``keys_dir``."""
        store = cls()
        for path in sorted(Path(keys_dir).glob("*.pub")):
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except (ValueError, OSError) as exc:
                raise ConfigError(f"cannot load public key {path}") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"public key {path} is not Ed25519")
            store.add(path.stem, key)
        return store


def _digest_message(digest_hex: str) -> bytes:
    if not isinstance(digest_hex, str) or not _HEX64.fullmatch(digest_hex):
        raise AuthError("a digest to sign/verify must be 64 hex characters")
    return _DIGEST_DOMAIN + digest_hex.lower().encode("ascii")


def sign_digest(identity: SigningIdentity, digest_hex: str) -> bytes:
    """A factory's end-to-end signature over a tensor digest (codec.tensor_digest)."""
    return identity.sign(_digest_message(digest_hex))


def verify_digest(trust: TrustStore, signer: str, digest_hex: str, signature: bytes | None) -> None:
    """AuthError unless ``signer`` signed ``digest_hex`` with sign_digest."""
    trust.verify(signer, _digest_message(digest_hex), signature)
