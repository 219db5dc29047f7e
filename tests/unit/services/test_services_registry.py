"""The service registry: one name per service, and every queue binding has its handler."""

from __future__ import annotations

import pytest
from federation.bus.topology import DEFAULT_TOPOLOGY, SERVICES
from federation.config import Settings
from federation.datasite_registry import DatasiteRegistry
from federation.roles import SERVICE_ROLES
from federation.runtime.launch import build_service_logic
from federation.runtime.registry import SERVICE_NAMES, SERVICE_SPECS, service_spec


def test_each_service_has_one_name_its_role_and_its_queue_is_named_by_it():
    assert SERVICE_NAMES == tuple(r.value for r in SERVICE_ROLES) == SERVICES
    assert SERVICE_NAMES == tuple(s.role.value for s in SERVICE_SPECS.values())
    assert [DEFAULT_TOPOLOGY.queue(n).name for n in SERVICE_NAMES] == [f"pdmfed.{n}" for n in SERVICE_NAMES]
    for other_spelling in ("dispatch", "trainer_dispatch"):
        with pytest.raises(KeyError, match="expected one of"):
            service_spec(other_spelling)


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_a_service_handles_exactly_the_types_bound_to_its_queue(name):
    spec = service_spec(name)
    service = build_service_logic(name, Settings(demo=True), comm_manager=object(),
                                  datasite_registry=DatasiteRegistry({}))
    bound = DEFAULT_TOPOLOGY.queue(spec.name).bindings
    assert set(service.handlers) == set(bound) == set(spec.consumes)
    assert service.name == name
