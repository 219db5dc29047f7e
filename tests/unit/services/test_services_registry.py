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
    assert [DEFAULT_TOPOLOGY.queue(n).name for n in SERVICE_NAMES] == [
        f"pdmfed.{n}" for n in SERVICE_NAMES
    ]
    for other_spelling in ("dispatch", "trainer_dispatch"):
        with pytest.raises(KeyError, match="expected one of"):
            service_spec(other_spelling)


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_a_service_handles_exactly_the_types_bound_to_its_queue(name):
    spec = service_spec(name)
    service = build_service_logic(
        name, Settings(demo=True), comm_manager=object(), datasite_registry=DatasiteRegistry({})
    )
    bound = DEFAULT_TOPOLOGY.queue(spec.name).bindings
    # handler tables are keyed by message class: every binding has its handler, every handler
    # its binding, and both are what the contracts say this role consumes
    assert all(isinstance(cls, type) for cls in service.handlers)
    assert service.handled_types == set(bound) == {cls.msg_type.value for cls in spec.consumes}
    assert set(service.handlers) == set(spec.consumes)
    assert service.name == name


def test_a_service_whose_handlers_are_not_its_bindings_does_not_build():
    from federation.errors import ConfigError
    from federation.runtime.registry import BuildContext, ServiceSpec
    from federation.runtime.service import Service
    from federation.wire.messages import CampaignStart, RoundCompleted

    spec = service_spec("aggregator")
    missing = ServiceSpec(spec.role, lambda ctx: Service("aggregator", ctx.queue, handlers={}))
    with pytest.raises(ConfigError, match="no handler for .*round.open"):
        missing.build_service(BuildContext("q"))
    one_more = {**spec.build_service(BuildContext("q")).handlers, RoundCompleted: lambda *a: None}
    extra = ServiceSpec(spec.role, lambda ctx: Service("aggregator", ctx.queue, handlers=one_more))
    with pytest.raises(ConfigError, match="without a binding: .*round.completed"):
        extra.build_service(BuildContext("q"))
    with pytest.raises(TypeError, match="keyed by message class"):
        Service("aggregator", "q", handlers={"campaign.start": lambda *a: None})
    assert CampaignStart in spec.consumes
