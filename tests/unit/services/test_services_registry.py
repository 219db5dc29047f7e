"""The service registry: one name per service, and every queue binding has its handler."""

from __future__ import annotations

import pytest
from federation.bus.topology import DEFAULT_TOPOLOGY, QUEUE_KEYS
from federation.config import Settings
from federation.datasite_registry import DatasiteRegistry
from federation.roles import SERVICE_ROLES
from federation.runtime.launch import SERVICE_KEYS, build_service_logic
from federation.runtime.registry import SERVICE_NAMES, SERVICE_SPECS, service_spec


def test_each_service_has_one_name_its_role_and_its_own_queue():
    assert SERVICE_NAMES == tuple(r.value for r in SERVICE_ROLES)
    assert QUEUE_KEYS == SERVICE_KEYS == {n: s.queue_key for n, s in SERVICE_SPECS.items()}
    assert len(set(QUEUE_KEYS.values())) == len(QUEUE_KEYS)
    with pytest.raises(KeyError, match="expected one of"):
        service_spec("dispatch")


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_a_service_handles_exactly_the_types_bound_to_its_queue(name):
    spec = service_spec(name)
    service = build_service_logic(name, Settings(demo=True), comm_manager=object(),
                                  datasite_registry=DatasiteRegistry({}))
    bound = DEFAULT_TOPOLOGY.queue(spec.queue_key).bindings
    assert set(service.handlers) == set(bound) == set(spec.consumes)
    assert service.name == name
