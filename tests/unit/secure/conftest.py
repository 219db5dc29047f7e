"""Fixtures for the secure manager's unit tests (no datasite, no broker: sealing is pure)."""

import pytest
from federation.communication.secure_syft_client import SecurePySyftCommunicationManager

#: One passphrase for the whole folder: PBKDF2 (600k iterations) runs once per process.
PASSPHRASE = "production_federated_learning_2025"


@pytest.fixture
def make_manager():
    def make(**kwargs):
        kwargs.setdefault("seed", 0)
        return SecurePySyftCommunicationManager(
            encryption_key=kwargs.pop("key", PASSPHRASE), **kwargs
        )

    return make


@pytest.fixture
def secure_comm(make_manager):
    return make_manager()
