"""Wiring: settings → bus, sealer, metrics, store, health → a running service (or all four)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from federation.config import Settings
from federation.crypto.signing import SigningIdentity, TrustStore
from federation.errors import ConfigError
from federation.runtime.registry import BuildContext, service_spec
from federation.runtime.roles import SenderRoles
from federation.runtime.service import Service, ServiceRunner
from federation.runtime.store import ServiceStore, open_store
from federation.runtime.trust import TrustedKeys, load_factory_trust
from federation.wire.contracts import ENVELOPE_ROLES

__all__ = [
    "ServiceNode",
    "make_bus",
    "make_sealer",
    "build_service_logic",
    "start_node",
    "service_main",
    "ensure_identities",
    "sender_roles",
    "load_datasite_registry",
    "widen_thread_pool",
]

log = logging.getLogger(__name__)

#: Open chunked updates per sender in the shared store: every replica of the sender publishes
#: at once, and a publisher killed mid-message leaves a partial update until it expires.
SHARED_UPDATES_PER_SENDER = 16


def _sender(settings: Settings, name: str) -> str:
    return settings.service_id or name


def keys_dir_of(settings: Settings) -> Path | None:
    """Where Ed25519 keys live (state_dir/keys in demo when unset)."""
    if settings.keys_dir is not None:
        return Path(settings.keys_dir)
    if settings.demo:
        return Path(settings.state_dir) / "keys"
    return None


def sender_roles(settings: Settings, trusted: Any = ()) -> SenderRoles:
    """Who may send what: the configured sender roles (ConfigError when there are none); in
    ``pdmfed demo``, which creates every key itself under its role's name, that map."""
    from federation.runtime.roles import load_sender_roles

    if settings.demo and not roles_configured(settings):
        return SenderRoles.of_roles(ENVELOPE_ROLES)
    return load_sender_roles(keys_dir_of(settings), settings.sender_roles, trusted)


def roles_configured(settings: Settings) -> bool:
    """Whether sender roles are configured (PDMFED_SENDER_ROLES or senders.json), not the demo's."""
    from federation.runtime.roles import ROLES_FILE

    kd = keys_dir_of(settings)
    return bool(settings.sender_roles) or (kd is not None and (kd / ROLES_FILE).exists())


def ensure_identities(keys_dir: Path, senders: list[str]) -> None:
    """Create the missing key pairs (demo and tests): every sealer then trusts every sender."""
    for sender in senders:
        SigningIdentity.load_or_create(keys_dir, sender)


def make_bus(settings: Settings, service_key: str, broker: Any = None, topology: Any = None) -> Any:
    """RabbitMQ when PDMFED_AMQP_URL is set, else the in-memory bus (shared broker in-process)."""
    topo = topology or topology_of(settings)
    if settings.amqp_url:
        from federation.bus.rabbitmq import RabbitBus

        return RabbitBus(
            settings.amqp_url,
            service=service_key,
            topology=topo,
            expected_message_bytes=settings.max_message_bytes,
            declare=settings.declare_topology,
            connect_give_up_s=settings.amqp_connect_give_up_s,
        )
    from federation.bus.memory import InMemoryBroker, InMemoryBus

    return InMemoryBus(broker if broker is not None else InMemoryBroker(topo))


def topology_of(settings: Settings) -> Any:
    """The topology named by settings.topology_prefix."""
    from federation.bus.topology import DEFAULT_TOPOLOGY

    if settings.topology_prefix == DEFAULT_TOPOLOGY.prefix:
        return DEFAULT_TOPOLOGY
    return DEFAULT_TOPOLOGY.with_prefix(settings.topology_prefix)


def make_sealer(settings: Settings, sender: str, role: str | None = None) -> Any:
    """A Sealer for this sender with the settings' keys, trust store and replay store (the
    role's Redis namespace and user; default: the sender's)."""
    from federation.crypto.sealer import Sealer

    return Sealer.from_settings(settings, sender, role=role)


def connector_session_manager(**options: Any) -> Any:
    """The connector's PySyft sessions: it logs in only with a data-scientist account."""
    from federation.communication import PySyftCommunicationManager

    return PySyftCommunicationManager(require_data_scientist=True, **options)


def load_datasite_registry(settings: Settings) -> Any:
    """The connector's datasite registry from PDMFED_DATASITE_REGISTRY (ConfigError if unset)."""
    from federation.datasite_registry import DatasiteRegistry

    if settings.datasite_registry is None:
        raise ConfigError(
            "PDMFED_DATASITE_REGISTRY is not set: the connector reaches only the datasites"
            " its own registry names (`pdmfed keys init` writes connector/datasites/datasites.json)"
        )
    return DatasiteRegistry.load(settings.datasite_registry)


def build_service_logic(
    name: str,
    settings: Settings,
    *,
    comm_manager: Any = None,
    factory_trust: TrustStore | None = None,
    queue: str | None = None,
    store: ServiceStore | None = None,
    datasite_registry: Any = None,
    metrics: Any = None,
) -> Service:
    """The Service (handlers) for one service name, built as its registry entry says."""
    spec = service_spec(name)
    q = queue or topology_of(settings).queue(spec.name).name
    return spec.build_service(
        BuildContext(
            q,
            comm_manager=comm_manager,
            factory_trust=factory_trust,
            store=store,
            settings=settings,
            datasite_registry=datasite_registry,
            metrics=metrics,
        )
    )


@dataclass
class ServiceNode:
    """One running service and everything it owns."""

    name: str
    runner: ServiceRunner
    bus: Any
    endpoint: Any
    metrics: Any
    store: ServiceStore
    health: Any = None
    extra: dict = field(default_factory=dict)

    def ready(self) -> bool:
        """Broker channel open and consumer registered."""
        return bool(self.runner.subscribed and self.bus.is_ready())

    async def stop(self) -> None:
        """Stop consuming (in-flight messages finish or are requeued), close everything."""
        await self.runner.stop()
        await self.bus.close()
        if self.health is not None:
            self.health.stop()
        self.store.close()


async def start_node(
    name: str,
    settings: Settings,
    *,
    broker: Any = None,
    topology: Any = None,
    registry: CollectorRegistry | None = None,
    comm_manager: Any = None,
    factory_trust: TrustStore | None = None,
    store_path: str | Path | None = None,
    health_port: int | None = None,
    concurrency: int | None = None,
    roles: SenderRoles | None = None,
    datasite_registry: Any = None,
) -> ServiceNode:
    """Build and start one service: bus, sealer, secure endpoint, store, runner, health."""
    from federation.bus.middleware import SecureEndpoint
    from federation.monitoring import HealthServer, Metrics
    from federation.runtime.allocator import keep_freed_buffers

    keep_freed_buffers()  # message buffers are reused warm, not faulted in afresh per message
    service_spec(name)  # KeyError naming the services for an unknown one
    sender = _sender(settings, name)
    sealer = make_sealer(settings, sender, role=name)
    if roles is None:  # refuse to start before anything connects
        roles = sender_roles(settings, sealer.trust.senders if sealer.trust is not None else ())
    bus = make_bus(settings, name, broker=broker, topology=topology)
    await bus.start()
    metrics = Metrics(name, registry)
    store = open_store(settings, name, path=store_path)  # PDMFED_STATE_URL: PostgreSQL, else SQLite
    if store.backend == "postgresql":  # replicas: chunks meet in the shared store, not one process
        from federation.runtime.shared_chunks import SharedChunkAssembler

        sealer.assembler = SharedChunkAssembler(
            store,
            max_update_bytes=settings.max_update_bytes,
            max_chunk_bytes=settings.max_message_bytes,
            updates_per_sender=SHARED_UPDATES_PER_SENDER,
        )
    endpoint = SecureEndpoint(bus, sealer, metrics, name, roles=roles)
    if settings.claim_dir is not None:  # claim check: large updates sealed once, sent by reference
        from federation.runtime.claims import ClaimStore

        store.claims = endpoint.claims = ClaimStore(
            Path(settings.claim_dir), name, sealer, models=settings.claim_models
        )
        store.collect_claims()
    _relearn_campaigns(endpoint, store)
    if hasattr(sealer.assembler, "refresh_limits"):  # a campaign.start another replica handled
        sealer.assembler.refresh_limits = lambda: _relearn_campaigns(endpoint, store)
    queue = (topology or topology_of(settings)).queue(name).name
    service = build_service_logic(
        name,
        settings,
        comm_manager=comm_manager,
        factory_trust=factory_trust,
        queue=queue,
        store=store,
        datasite_registry=datasite_registry,
        metrics=metrics,
    )
    runner = ServiceRunner(service, endpoint, store, metrics)
    node = ServiceNode(name, runner, bus, endpoint, metrics, store)
    runner.concurrency = concurrency or service_spec(name).concurrency
    if service_spec(name).on_start is not None:
        service_spec(name).on_start()
    await runner.start()
    port = settings.metrics_port if health_port is None else health_port
    if port is not None and port >= 0 and (health_port is not None or settings.metrics_port):
        node.health = HealthServer(port, registry, ready=node.ready)
    log.info("%s started (queue %s)", name, service.queue)
    return node


def _relearn_campaigns(endpoint: Any, store: Any) -> None:
    """After a restart, the campaigns this service stored cap chunked updates again."""
    with store.transaction() as tx:
        stored = [tx.get(key) for key in tx.keys("campaign/")]
    for value in stored:
        if isinstance(value, dict):  # the config itself, or dispatch's record holding it
            endpoint.learn_campaign(value.get("config", value))


def orchestrator_endpoint(settings: Settings, bus: Any, sealer: Any, metrics: Any,
                          roles: Any) -> Any:  # fmt: skip
    """The orchestrator's endpoint; where it mounts the claim directory (PDMFED_CLAIM_DIR), it
    redeems events sent by reference (PDMFED_CLAIM_MODELS) from it, read-only."""
    from federation.bus.middleware import SecureEndpoint

    endpoint = SecureEndpoint(bus, sealer, metrics, "orchestrator", roles=roles)
    if settings.claim_dir is not None:
        from federation.runtime.claims import ClaimStore

        endpoint.claims = ClaimStore.reader(Path(settings.claim_dir), sealer)
    return endpoint


def widen_thread_pool(loop: asyncio.AbstractEventLoop | None = None, workers: int = 32) -> None:
    """Blocking I/O (PySyft HTTP calls, sealing, SQLite) runs in threads; the default pool has
    only cores + 4 workers, which would cap the connector's parallel trainings."""
    from concurrent.futures import ThreadPoolExecutor

    (loop or asyncio.get_running_loop()).set_default_executor(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pdmfed")
    )


def service_main(name: str) -> int:
    """`pdmfed service <name>`: run one service until SIGTERM/SIGINT."""
    from federation.logs import setup_logging

    settings = Settings()
    setup_logging(settings.log_level)
    settings.validate_secrets()
    factory_trust = registry = None
    kd = keys_dir_of(settings)
    if name == "security":
        factory_trust = load_factory_trust(kd, demo=settings.demo)
        if factory_trust is not None:
            log.info("security trusts factories: %s", ", ".join(factory_trust.senders))
    if name == "connector":
        registry = load_datasite_registry(settings)
        log.info(
            "connector reaches the datasites of its registry %s: %s",
            registry.source,
            ", ".join(registry.ids),
        )

    async def run() -> None:
        widen_thread_pool()
        node = await start_node(
            name, settings, factory_trust=factory_trust, datasite_registry=registry
        )
        trusted = TrustedKeys(
            kd,
            node.endpoint.sealer.trust,
            factory_trust,
            roles=node.endpoint.roles if roles_configured(settings) else None,
            roles_setting=settings.sender_roles,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def on_sighup() -> None:
            trusted.reload()
            if registry is not None:
                registry.reload()

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        log.info(
            "%s: SIGHUP reloads its trusted public keys (%s), sender roles%s",
            name,
            trusted.describe(),
            " and its datasite registry" if registry is not None else "",
        )
        await stop.wait()
        log.info("%s: shutting down", name)
        await node.stop()

    asyncio.run(run())
    return 0
