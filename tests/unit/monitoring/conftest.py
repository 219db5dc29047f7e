"""In-memory fakes of the seed's communication managers (the PySyft and secure managers' method shapes) for unit tests."""

from __future__ import annotations

import copy
import hashlib
import os
import time
from typing import Any

import msgpack
import pytest
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from federation.errors import IntegrityError, ReplayError
from prometheus_client import CollectorRegistry


class FakeCommManager:
    """get_connection_status() / is_connected() over a dict the test mutates."""

    def __init__(self, statuses: dict[str, str] | None = None) -> None:
        self.statuses = dict(statuses or {})

    def get_connection_status(self) -> dict[str, str]:
        return dict(self.statuses)

    def is_connected(self, datasite_id: str) -> bool:
        return self.statuses.get(datasite_id) == "connected"


def _encode(update: dict[str, torch.Tensor]) -> bytes:
    return msgpack.packb(
        {k: [str(v.dtype), list(v.shape), v.numpy().tobytes()] for k, v in update.items()}
    )


def _decode(data: bytes) -> dict[str, torch.Tensor]:
    out = {}
    for k, (_, shape, raw) in msgpack.unpackb(data).items():
        out[k] = torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape)
    return out


class FakeSecureComm:
    """The secure manager's surface with real AES-GCM, replay memory, clip+noise DP and a median detector.

    Knobs let a test break one part: `dp_adds_noise`, `verify_integrity`, `check_replay`,
    `bft_sensitive`.
    """

    def __init__(self, **knobs: Any) -> None:
        self.key = AESGCM.generate_key(bit_length=256)
        self.differential_privacy_enabled = knobs.get("enable_dp", True)
        self.byzantine_fault_tolerance_enabled = knobs.get("enable_bft", True)
        self.noise_multiplier = knobs.get("noise_multiplier", 1.0)
        self.min_clients = knobs.get("min_clients", 3)
        self.dp_adds_noise = knobs.get("dp_adds_noise", True)
        self.verify_integrity = knobs.get("verify_integrity", True)
        self.check_replay = knobs.get("check_replay", True)
        self.bft_sensitive = knobs.get("bft_sensitive", True)
        self._seen: set[bytes] = set()
        self.metrics: dict[str, Any] = {}

    def encrypt_model_update(self, update: dict[str, torch.Tensor]) -> dict[str, Any]:
        plain = _encode(update)
        nonce = os.urandom(12)
        return {
            "encrypted_data": AESGCM(self.key).encrypt(nonce, plain, None),
            "nonce": nonce,
            "timestamp": time.time(),
            "checksum": hashlib.sha256(plain).hexdigest(),
            "security_version": "1.0",
        }

    def decrypt_model_update(self, package: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.check_replay and package["nonce"] in self._seen:
            raise ReplayError("replayed package")
        try:
            plain = AESGCM(self.key).decrypt(package["nonce"], package["encrypted_data"], None)
        except InvalidTag as exc:
            if self.verify_integrity:
                raise IntegrityError("authentication tag mismatch") from exc
            plain = _encode({"test_param": torch.zeros(10, 10)})
        self._seen.add(package["nonce"])
        return _decode(plain)

    def apply_differential_privacy(self, model_update, sensitivity=1.0):
        if not self.dp_adds_noise:
            return copy.deepcopy(model_update)
        return {
            k: v + torch.randn_like(v) * self.noise_multiplier * sensitivity
            for k, v in model_update.items()
        }

    def detect_byzantine_clients(self, updates):
        flat = torch.stack([u["model_update"]["param"].flatten() for u in updates])
        center = flat.median(dim=0).values
        dist = (flat - center).norm(dim=1)
        mad = (dist - dist.median()).abs().median() + 1e-12
        limit = 2.0 if self.bft_sensitive else 1e9
        bad = [u["datasite_id"] for u, d in zip(updates, dist, strict=True) if d / mad > limit * 10]
        kept = [u for u in updates if u["datasite_id"] not in bad]
        return kept, bad

    def get_security_metrics(self) -> dict[str, Any]:
        return copy.deepcopy(self.metrics)


def security_metrics(**over: Any) -> dict[str, Any]:
    """A get_security_metrics() result in the seed's shape, with overrides."""
    inner = {
        "encrypted_messages": 0,
        "authentication_checks": 0,
        "security_violations": 0,
        "dp_noise_applications": 0,
        "byzantine_attacks_detected": 0,
        "clients_filtered": 0,
    }
    inner.update(over.pop("inner", {}))
    base = {
        "security_level": "high",
        "encryption_enabled": True,
        "differential_privacy_enabled": True,
        "byzantine_fault_tolerance_enabled": True,
        "noise_multiplier": 1.0,
        "client_reputation_summary": {},
        "security_metrics": inner,
    }
    base.update(over)
    return base


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_security_metrics():
    return security_metrics


@pytest.fixture
def fake_secure_comm():
    return FakeSecureComm


@pytest.fixture
def fake_comm():
    return FakeCommManager
