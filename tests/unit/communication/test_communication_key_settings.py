"""The seed's SecurePySyftCommunicationManager takes its sealing key material where the services
do (``federation.config``: arguments, then the environment, then PDMFED_SECRETS_DIR files), and
fails closed: no salt outside `pdmfed demo` is a ConfigError, never a built-in public salt."""

from __future__ import annotations

import pytest
import torch
from federation.communication.secure_syft_client import SecurePySyftCommunicationManager
from federation.config import DEMO_SALT, load_settings
from federation.crypto import KeyRing, ReplayGuard, Sealer
from federation.crypto.replay import InMemorySeenStore
from federation.errors import ConfigError, IntegrityError, UnknownKeyError
from federation.wire.envelope import Envelope

PASSPHRASE = "unit-test-passphrase-key-settings"
SALT = "3f9c1a7be2d84605"
#: Everything that could hand the manager key material behind the test's back.
KEY_VARS = (
    "PDMFED_ENCRYPTION_KEY",
    "PDMFED_KEY_SALT",
    "PDMFED_KEY_ID",
    "PDMFED_DEMO",
    "PDMFED_SECRETS_DIR",
)


@pytest.fixture(autouse=True)
def _no_key_material(monkeypatch):
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def secrets_dir(tmp_path, monkeypatch):
    """A mounted Secret: one file per setting, PDMFED_SECRETS_DIR naming the folder."""

    def mount(**files: str):
        for name, value in files.items():
            (tmp_path / f"pdmfed_{name}").write_text(value)
        monkeypatch.setenv("PDMFED_SECRETS_DIR", str(tmp_path))
        return tmp_path

    return mount


def _update():
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


def _service_opener() -> Sealer:
    """How a service derives its key: KeyRing.from_settings(load_settings())."""
    return Sealer(
        KeyRing.from_settings(load_settings()),
        sender="security",
        replay=ReplayGuard(InMemorySeenStore(), 630.0),
        require_signature=False,
    )


def _opened_by_service(manager: SecurePySyftCommunicationManager) -> torch.Tensor:
    package = manager.encrypt_model_update(_update(), datasite_id="site-a", round_num=1)
    opened = _service_opener().open_envelope(Envelope.from_dict(package))
    return opened.payload["model_update"]["w"]


# --- the operator gives secrets as files (k8s Secret mounted at PDMFED_SECRETS_DIR) ---------
def test_when_the_salt_is_a_file_in_the_secrets_dir__the_manager_seals_with_the_services_key(
    secrets_dir,
):
    secrets_dir(encryption_key=PASSPHRASE, key_salt=SALT)
    manager = SecurePySyftCommunicationManager(encryption_key=PASSPHRASE, seed=0)
    torch.testing.assert_close(_opened_by_service(manager), _update()["w"])


def test_when_no_passphrase_is_given__the_manager_reads_it_from_the_secrets_dir_too(secrets_dir):
    secrets_dir(encryption_key=PASSPHRASE, key_salt=SALT, key_id="k7")
    manager = SecurePySyftCommunicationManager(seed=0)
    package = manager.encrypt_model_update(_update())
    assert package["key_id"] == "k7"
    torch.testing.assert_close(_opened_by_service(manager), _update()["w"])


def test_when_the_key_id_is_set__the_manager_seals_under_it_as_the_services_do(monkeypatch):
    monkeypatch.setenv("PDMFED_KEY_SALT", SALT)
    monkeypatch.setenv("PDMFED_ENCRYPTION_KEY", PASSPHRASE)
    monkeypatch.setenv("PDMFED_KEY_ID", "k2")
    manager = SecurePySyftCommunicationManager(encryption_key=PASSPHRASE, seed=0)
    torch.testing.assert_close(_opened_by_service(manager), _update()["w"])


def test_when_the_secrets_dir_lacks_the_salt__construction_refuses_naming_pdmfed_key_salt(
    secrets_dir,
):
    secrets_dir(encryption_key=PASSPHRASE)
    with pytest.raises(ConfigError, match="PDMFED_KEY_SALT") as err:
        SecurePySyftCommunicationManager(encryption_key=PASSPHRASE)
    assert "\n" not in str(err.value)


# --- nothing fails open ----------------------------------------------------------------------
def test_when_no_salt_is_set_anywhere_outside_demo__construction_refuses_with_one_line():
    with pytest.raises(ConfigError, match="PDMFED_KEY_SALT is not set") as err:
        SecurePySyftCommunicationManager(encryption_key=PASSPHRASE)
    assert "\n" not in str(err.value)


def test_when_the_salt_variable_is_empty__construction_refuses_rather_than_default(monkeypatch):
    monkeypatch.setenv("PDMFED_KEY_SALT", "")
    with pytest.raises(ConfigError, match="PDMFED_KEY_SALT"):
        SecurePySyftCommunicationManager(encryption_key=PASSPHRASE)


def test_when_an_empty_salt_is_passed__construction_refuses():
    with pytest.raises(ConfigError, match="salt"):
        SecurePySyftCommunicationManager(encryption_key=PASSPHRASE, salt="")


def test_when_no_passphrase_is_given_or_set__construction_refuses_naming_the_variable(
    monkeypatch,
):
    monkeypatch.setenv("PDMFED_KEY_SALT", SALT)
    with pytest.raises(ConfigError, match="PDMFED_ENCRYPTION_KEY") as err:
        SecurePySyftCommunicationManager()
    assert "\n" not in str(err.value)


def test_when_managers_forget_the_salt__they_do_not_share_a_key_with_each_other():
    """The red-team case: two deployments with the same passphrase and no salt used to derive
    the same key from a public default; now neither starts."""
    for _ in range(2):
        with pytest.raises(ConfigError):
            SecurePySyftCommunicationManager(encryption_key=PASSPHRASE)


# --- precedence and the demo ----------------------------------------------------------------
def test_when_a_salt_is_passed__it_wins_over_the_environment_and_the_files(
    secrets_dir, monkeypatch
):
    secrets_dir(encryption_key=PASSPHRASE, key_salt="file-salt-0a1b2c3d")
    monkeypatch.setenv("PDMFED_KEY_SALT", "env-salt-4e5f6a7b")
    explicit = SecurePySyftCommunicationManager(encryption_key=PASSPHRASE, salt=SALT, seed=0)
    package = explicit.encrypt_model_update(_update())
    with pytest.raises(IntegrityError):  # the services' salt (the environment's) differs
        _service_opener().open_envelope(Envelope.from_dict(package))
    monkeypatch.setenv("PDMFED_KEY_SALT", SALT)
    torch.testing.assert_close(_opened_by_service(explicit), _update()["w"])


def test_when_a_key_id_is_passed__it_wins_over_the_settings(monkeypatch):
    monkeypatch.setenv("PDMFED_KEY_SALT", SALT)
    monkeypatch.setenv("PDMFED_ENCRYPTION_KEY", PASSPHRASE)
    monkeypatch.setenv("PDMFED_KEY_ID", "k2")
    manager = SecurePySyftCommunicationManager(encryption_key=PASSPHRASE, key_id="k1", seed=0)
    package = manager.encrypt_model_update(_update())
    assert package["key_id"] == "k1"
    with pytest.raises(UnknownKeyError):
        _service_opener().open_envelope(Envelope.from_dict(package))


def test_when_in_demo_mode_without_a_salt__the_manager_uses_the_services_demo_key(monkeypatch):
    monkeypatch.setenv("PDMFED_DEMO", "1")
    manager = SecurePySyftCommunicationManager(encryption_key=PASSPHRASE, seed=0)
    monkeypatch.setenv("PDMFED_ENCRYPTION_KEY", PASSPHRASE)
    torch.testing.assert_close(_opened_by_service(manager), _update()["w"])
    assert load_settings().salt() == DEMO_SALT


def test_when_the_seeds_production_orchestrator_has_no_salt__it_refuses_to_start():
    from federation.communication import ProductionSecureOrchestrator

    with pytest.raises(ConfigError, match="PDMFED_KEY_SALT"):
        ProductionSecureOrchestrator({"encryption_key": PASSPHRASE})


def test_when_the_seeds_round_orchestrator_reads_files__it_seals_with_the_services_key(
    secrets_dir,
):
    from federation.communication import FederatedLearningOrchestrator

    secrets_dir(encryption_key=PASSPHRASE, key_salt=SALT)
    orchestrator = FederatedLearningOrchestrator(use_secure_communication=True)
    torch.testing.assert_close(_opened_by_service(orchestrator.comm_manager), _update()["w"])
