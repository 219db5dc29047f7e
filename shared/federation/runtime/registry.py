"""The four services in one table: role (their one name), queue, concurrency, builder, start hook."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from federation.roles import Role

__all__ = ["BuildContext", "ServiceSpec", "SERVICE_SPECS", "SERVICE_NAMES", "service_spec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildContext:
    """What a service's builder may use: its queue, and the parts only some services need."""

    queue: str
    comm_manager: Any = None
    factory_trust: Any = None
    store: Any = None
    settings: Any = None
    #: The connector's datasite registry (default: the file its settings name).
    datasite_registry: Any = None
    metrics: Any = None


@dataclass(frozen=True)
class ServiceSpec:
    """One service: the CLI, launchers, queue (``<prefix>.<name>``), store, topology, metrics
    and sender id all use ``name``, its role."""

    role: Role
    build: Callable[[BuildContext], Any]
    #: Handlers running at once (the connector trains every datasite of a round in parallel).
    concurrency: int = 1
    #: Run once before the service consumes (e.g. warm compiled kernels on a side thread).
    on_start: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return self.role.value

    @property
    def consumes(self) -> tuple[type, ...]:
        """The message classes the contracts say it consumes: its queue is bound to their routing
        keys and its service's handler table has exactly these keys (checked when it is built)."""
        from federation.wire.contracts import CONTRACTS

        return tuple(c.payload for c in CONTRACTS.values() if self.role in c.consumer_roles)

    def build_service(self, ctx: BuildContext) -> Any:
        """Its Service; ConfigError when its handlers are not exactly the classes it consumes."""
        from federation.errors import ConfigError

        service = self.build(ctx)
        handled, bound = set(service.handlers), set(self.consumes)
        if handled != bound:
            missing = sorted(c.msg_type.value for c in bound - handled)
            extra = sorted(c.msg_type.value for c in handled - bound)
            raise ConfigError(
                f"{self.name}: no handler for {missing or 'nothing'}; handlers"
                f" without a binding: {extra or 'none'}"
            )
        return service


def _build_connector(ctx: BuildContext) -> Any:
    from services.connector.handlers import ConnectorLogic, build_service

    comm = ctx.comm_manager
    if comm is None:
        from federation.runtime.launch import connector_session_manager

        comm = connector_session_manager()
    registry = ctx.datasite_registry
    if registry is None:
        from federation.runtime.launch import load_datasite_registry

        registry = load_datasite_registry(ctx.settings)
    logic = ConnectorLogic(
        comm, registry, on_refusal=ctx.metrics.refused_datasite if ctx.metrics is not None else None
    )
    store = ctx.store
    if store is None:
        from federation.runtime.store_sqlite import SqliteStore

        store = SqliteStore()
    logic.load_campaigns(store)
    return build_service(logic, queue=ctx.queue)


def _build_dispatch(ctx: BuildContext) -> Any:
    from services.trainer_dispatch.handlers import build_service

    return build_service(queue=ctx.queue)


def _build_security(ctx: BuildContext) -> Any:
    from services.security.handlers import build_service

    verify = verify_stats = None
    if ctx.factory_trust is not None:
        from federation.datasite.signing import verify_stats_signature, verify_update_signature

        trust = ctx.factory_trust

        def verify(payload: dict) -> None:
            verify_update_signature(payload, trust)

        def verify_stats(payload: dict) -> None:
            verify_stats_signature(payload, trust)

    return build_service(verify_factory=verify, queue=ctx.queue, verify_stats=verify_stats)


def _build_aggregator(ctx: BuildContext) -> Any:
    from services.aggregator.handlers import build_service

    return build_service(queue=ctx.queue)


def _warm_up_kernels() -> None:
    """Load the robust aggregators' compiled kernels on a side thread while the service starts."""
    import threading

    from federation.robust._order_stats import warm_up

    def run() -> None:
        try:
            warm_up()
        except Exception:  # the first real use compiles them anyway; never fail a start for this
            log.exception("kernel warm-up failed")

    threading.Thread(target=run, name="pdmfed-warm-up", daemon=True).start()


#: Service name (= its role) -> spec, in the order services are listed everywhere.
SERVICE_SPECS: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec(Role.CONNECTOR, _build_connector, concurrency=16),
        ServiceSpec(Role.TRAINER_DISPATCH, _build_dispatch),
        ServiceSpec(Role.SECURITY, _build_security, on_start=_warm_up_kernels),
        ServiceSpec(Role.AGGREGATOR, _build_aggregator, on_start=_warm_up_kernels),
    )
}
SERVICE_NAMES: tuple[str, ...] = tuple(SERVICE_SPECS)


def service_spec(name: str) -> ServiceSpec:
    """The spec of service ``name`` (KeyError naming the services for an unknown one)."""
    try:
        return SERVICE_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; expected one of {list(SERVICE_NAMES)}") from None
