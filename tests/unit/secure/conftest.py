"""Fixtures for the secure manager's unit tests (no datasite, no broker: sealing is pure)."""

import pytest
from federation.communication.secure_syft_client import SecurePySyftCommunicationManager

#: One passphrase for the whole folder: PBKDF2 (600k iterations) runs once per process.
PASSPHRASE = "production_federated_learning_2025"
#: The deployment's salt. The seed's examples give only a passphrase, so their environment
#: supplies PDMFED_KEY_SALT as an operator's does: the manager has no built-in salt.
SALT = "unit-test-salt-secure-manager"


@pytest.fixture(autouse=True)
def _deployment_salt(monkeypatch):
    monkeypatch.setenv("PDMFED_KEY_SALT", SALT)


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
