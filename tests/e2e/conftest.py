"""Fixtures for e2e: three real PySyft factory datasites (module-scoped) and the broker."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import pytest
from e2e_helpers import AMQP_URL, FACTORIES, ORCH_EMAIL, ORCH_PASSWORD_ENV, broker_reachable
from federation.crypto.signing import SigningIdentity
from federation.datasite_registry import write_registry


@dataclass
class Fleet:
    data: object
    sites: dict
    partitions: dict
    factory_keys: object
    trust_dir: object
    #: The connector's datasite registry (PDMFED_DATASITE_REGISTRY): each site's URL and account.
    registry_file: object


@pytest.fixture(scope="session")
def amqp_url() -> str:
    if not broker_reachable(AMQP_URL):
        pytest.skip(
            f"RabbitMQ is not reachable at {AMQP_URL} (start it: rabbitmq-server -detached)"
        )
    return AMQP_URL


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three datasites with small non-IID partitions of the synthetic fleet."""
    from federation.datasite import launch_datasite
    from federation.ml.data import load_dataset
    from federation.ml.partition import partition_engines, split_partition

    root = tmp_path_factory.mktemp("fleet")
    os.environ.setdefault(ORCH_PASSWORD_ENV, secrets.token_urlsafe(18))
    data = load_dataset(None, seed=11)
    groups = partition_engines(
        data.train.engines, 3, seed=2, mode="profile", lifetimes=data.train_lifetimes
    )
    parts = split_partition(data.train, groups)
    partitions = {
        ds: {"X": p.X[::6][:400], "y": p.y[::6][:400]}
        for ds, p in zip(FACTORIES, parts, strict=True)
    }
    sites = {}
    try:
        for ds in FACTORIES:
            sites[ds] = launch_datasite(
                ds,
                0,
                partitions[ds],
                admin_password=secrets.token_urlsafe(18),
                signing_key_dir=root / "factory-keys" / ds,
                datasite_id=ds,
                orchestrator_email=ORCH_EMAIL,
                orchestrator_password=os.environ[ORCH_PASSWORD_ENV],
            )
        trust_dir = root / "trust"
        trust_dir.mkdir()
        for ds in FACTORIES:
            pub = SigningIdentity.load(root / "factory-keys" / ds, ds).public_pem()
            (trust_dir / f"{ds}.pub").write_bytes(pub)
        registry_file = write_registry(
            root / "registry",
            {ds: (h.url, ORCH_EMAIL, os.environ[ORCH_PASSWORD_ENV]) for ds, h in sites.items()},
        )
        yield Fleet(data, sites, partitions, root / "factory-keys", trust_dir, registry_file)
    finally:
        for h in sites.values():
            h.stop()
