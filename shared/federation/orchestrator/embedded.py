"""All four services and the orchestrator client in one process (the embedded default)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from federation.campaign import CampaignConfig
from federation.config import Settings
from federation.crypto.signing import TrustStore
from federation.orchestrator.client import CampaignClient, CampaignRecord
from federation.runtime.launch import (
    ServiceNode,
    ensure_identities,
    keys_dir_of,
    start_node,
    widen_thread_pool,
)
from federation.runtime.registry import SERVICE_NAMES
from federation.runtime.roles import SenderRoles
from federation.wire.contracts import ENVELOPE_ROLES

__all__ = ["EmbeddedFederation", "ORCHESTRATOR_SENDER"]

log = logging.getLogger(__name__)

ORCHESTRATOR_SENDER = "orchestrator"


class EmbeddedFederation:
    """connector, trainer-dispatch, security and aggregator sharing one bus broker in-process.

    ``services`` names the ones to run here (all by default); the others must then be running
    elsewhere on the same RabbitMQ topology (e.g. as `pdmfed service` processes).

    ``datasite_registry`` is the connector's (``federation.datasite_registry``; default: the
    file PDMFED_DATASITE_REGISTRY names). Over the in-memory bus by default; over RabbitMQ when settings.amqp_url is set. Each
    service keeps its own sealer, identity, replay store, SQLite store and metrics labels:
    the same handlers and the same checks as when each runs in its own container.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        comm_manager: Any = None,
        datasite_registry: Any = None,
        factory_trust: TrustStore | None = None,
        registry: CollectorRegistry | None = None,
        topology: Any = None,
        health: bool = False,
        services: tuple[str, ...] = SERVICE_NAMES,
    ) -> None:
        unknown = sorted(set(services) - set(SERVICE_NAMES))
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; choose from {sorted(SERVICE_NAMES)}")
        if not settings.amqp_url and set(services) != set(SERVICE_NAMES):
            raise ValueError(
                "running only some services in-process needs a broker (PDMFED_AMQP_URL)"
            )
        self.settings = settings
        self.services = tuple(services)
        self.comm_manager = comm_manager
        self.datasite_registry = datasite_registry
        self.factory_trust = factory_trust
        self.registry = registry if registry is not None else CollectorRegistry()
        self.topology = topology
        self.health = health
        self.nodes: dict[str, ServiceNode] = {}
        self.client: CampaignClient | None = None
        self._client_bus: Any = None
        self._broker: Any = None
        self.roles: SenderRoles | None = None

    async def start(self) -> None:
        """Start the four services, then the orchestrator's event listener."""
        from federation.bus.memory import InMemoryBroker
        from federation.monitoring import Metrics
        from federation.runtime.launch import (
            make_bus,
            make_sealer,
            orchestrator_endpoint,
            topology_of,
        )

        widen_thread_pool()
        kd = keys_dir_of(self.settings)
        if kd is not None:
            ensure_identities(kd, [*SERVICE_NAMES, ORCHESTRATOR_SENDER])
        self.roles = self._sender_roles(kd)
        if not self.settings.amqp_url:
            self._broker = InMemoryBroker(self.topology or topology_of(self.settings))
        for name in self.services:
            await self.start_service(name)
        self._client_bus = make_bus(
            self.settings, "orchestrator", broker=self._broker, topology=self.topology
        )
        await self._client_bus.start()
        sealer = make_sealer(self.settings, ORCHESTRATOR_SENDER)
        endpoint = orchestrator_endpoint(
            self.settings,
            self._client_bus,
            sealer,
            Metrics("orchestrator", self.registry),
            self.roles,
        )
        self.client = CampaignClient(self._client_bus, endpoint)
        await self.client.listen()

    def _sender_roles(self, kd: Path | None) -> SenderRoles:
        """The configured sender roles; without any, this process's own map: it created each
        service's and the orchestrator's key under its role's name."""
        from federation.runtime.roles import ROLES_FILE, load_sender_roles

        if self.settings.sender_roles or (kd is not None and (kd / ROLES_FILE).exists()):
            return load_sender_roles(kd, self.settings.sender_roles)
        return SenderRoles.of_roles(ENVELOPE_ROLES)

    async def start_service(self, name: str) -> ServiceNode:
        """(Re)start one service with its persistent store."""
        state_dir = Path(self.settings.state_dir)
        node = await start_node(
            name,
            self.settings,
            broker=self._broker,
            topology=self.topology,
            registry=self.registry,
            comm_manager=self.comm_manager if name == "connector" else None,
            datasite_registry=self.datasite_registry if name == "connector" else None,
            factory_trust=self.factory_trust if name == "security" else None,
            store_path=state_dir / f"{name}.sqlite",
            health_port=0 if self.health else None,
            roles=self.roles,
        )
        self.nodes[name] = node
        return node

    async def run_campaign(self, cfg: CampaignConfig, timeout: float = 600.0) -> CampaignRecord:
        """Start a campaign and wait for its completion."""
        assert self.client is not None, "start() first"
        await self.client.start_campaign(cfg)
        return await self.client.wait(cfg.campaign_id, timeout)

    async def stop(self) -> None:
        """Stop everything (services first, then the listener)."""
        for node in list(self.nodes.values()):
            try:
                await node.stop()
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", node.name)
        self.nodes.clear()
        if self._client_bus is not None:
            await self._client_bus.close()
            self._client_bus = None
