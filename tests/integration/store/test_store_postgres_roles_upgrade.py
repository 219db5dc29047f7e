"""A database from before per-service roles: the roles' SQL hands each schema to its service."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
import pytest
from federation.provision import SERVICES, FactorySpec, ProvisionOptions, provision
from federation.runtime.store_postgres_roles import schema_of
from psycopg import errors
from store_helpers import (
    ADMIN_URL,
    deployment_database,
    deployment_database_name,
    postgres_unavailable,
)

pytestmark = pytest.mark.integration


def test_after_the_roles_sql_each_service_keeps_its_state_under_its_own_role_and_only_there(
    tmp_path,
):
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from federation.runtime.store_postgres import PostgresStore

    host = urlsplit(ADMIN_URL).netloc.rsplit("@", 1)[-1]
    out = tmp_path / "secrets"
    provision(
        out,
        [FactorySpec.parse("factory-1")],
        ProvisionOptions(state_url=f"postgresql://{host}/{deployment_database_name()}"),
    )

    def as_before(superuser_url: str) -> None:  # every service on the superuser, as it was
        for service in SERVICES:
            store = PostgresStore(superuser_url, schema=schema_of(service), blob_dir=tmp_path)
            with store.transaction() as tx:
                tx.put("ledger/c1", {"owner": service})
                tx.emit("round.completed", {"by": service}, round_num=1)
            store.close()

    with deployment_database(out, SERVICES, before_roles=as_before) as urls:
        for service, url in urls.items():
            store = PostgresStore(url, schema=schema_of(service), blob_dir=tmp_path)
            try:
                assert store.read("ledger/c1") == {"owner": service}
                with store.transaction() as tx:  # the outbox's id sequence is the role's too
                    tx.emit("campaign.completed", {"by": service}, round_num=1)
                for _ in range(2):
                    claim = store.claim_outbox()
                    assert claim is not None
                    claim.done()
                assert store.claim_outbox() is None
            finally:
                store.close()
        with psycopg.connect(urls["security"]) as conn:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {schema_of('aggregator')}.kv")
