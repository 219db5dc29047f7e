"""Four real PySyft factory datasites for the orchestrator tests: two honest, two compromised."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from orchestrators_helpers import COMPROMISED, HONEST, ORCH_EMAIL, Factories, tiny_partition


@pytest.fixture(scope="module", autouse=True)
def deployment_salt() -> Iterator[str]:
    """The seed's orchestrators name no salt: the deployment supplies PDMFED_KEY_SALT, as an
    operator's does (module-wide: the round and campaign fixtures are module-scoped)."""
    salt = secrets.token_hex(16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PDMFED_KEY_SALT", salt)
        yield salt


@pytest.fixture(scope="module")
def factories(tmp_path_factory) -> Iterator[Factories]:
    """Launched once per module on free ports; every process and temp dir removed afterwards."""
    from federation.datasite import launch_datasite

    password = secrets.token_urlsafe(16)
    keys = tmp_path_factory.mktemp("factory-keys")
    handles: dict[str, Any] = {}
    plan = [(ds, None) for ds in HONEST] + list(COMPROMISED.items())
    try:
        for i, (ds, attack) in enumerate(plan):
            handles[ds] = launch_datasite(
                ds,
                0,
                tiny_partition(seed=200 + i),
                admin_password=secrets.token_urlsafe(16),
                signing_key_dir=keys,
                orchestrator_email=ORCH_EMAIL,
                orchestrator_password=password,
                attack=attack,
            )
        yield Factories(handles, password)
    finally:
        for handle in handles.values():
            handle.stop()
