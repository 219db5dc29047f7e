"""Real PySyft datasites for the datasite/communication integration tests (launched per module)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from datasite_helpers import ORCH_EMAIL, tiny_partition
from federation.datasite import launch_datasite


@dataclass
class Site:
    handle: object
    partition: dict[str, np.ndarray]
    credentials: dict[str, str]


@pytest.fixture(scope="module")
def orchestrator_password() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory, orchestrator_password) -> Iterator[dict[str, Site]]:
    """Two factory datasites on free ports, each with its own partition and signing key."""
    keys = tmp_path_factory.mktemp("factory-keys")
    sites: dict[str, Site] = {}
    try:
        for i, ds in enumerate(["automotive_detroit_main", "chemical_houston_reactor"]):
            part = tiny_partition(seed=100 + i, n=48 + 8 * i)
            handle = launch_datasite(
                ds,
                0,
                part,
                admin_password=secrets.token_urlsafe(16),
                signing_key_dir=keys,
                orchestrator_email=ORCH_EMAIL,
                orchestrator_password=orchestrator_password,
            )
            creds = {"email": ORCH_EMAIL, "password": orchestrator_password, "datasite_id": ds}
            sites[ds] = Site(handle, part, creds)
        yield sites
    finally:
        for site in sites.values():
            site.handle.stop()
