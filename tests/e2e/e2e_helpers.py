"""Helpers for the end-to-end tests: real datasites, RabbitMQ topologies, service processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from federation.campaign import CampaignConfig

AMQP_URL = os.environ.get("PDMFED_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ORCH_EMAIL = "orchestrator@pdm-federation.org"
ORCH_PASSWORD_ENV = "PDMFED_E2E_ORCHESTRATOR_PASSWORD"
FACTORIES = ("automotive_detroit_main", "chemical_houston_reactor", "aerospace_seattle_assembly")
PASSPHRASE_ENV = "PDMFED_ENCRYPTION_KEY"


def broker_reachable(url: str = AMQP_URL) -> bool:
    """Whether a TCP connection to the broker opens."""
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=2
        ):
            return True
    except OSError:
        return False


def unique_prefix(tag: str) -> str:
    """A topology prefix no other test run uses."""
    return f"e2e-{tag}-{uuid.uuid4().hex[:8]}"


def campaign_config(
    sites: dict,
    *,
    campaign_id: str,
    rounds: int,
    n_features: int,
    window: int,
    seed: int = 0,
    **overrides,
) -> CampaignConfig:
    """A small, fast campaign over the given datasite handles."""
    base = dict(
        campaign_id=campaign_id,
        datasites=list(sites),
        rounds=rounds,
        round_timeout_s=90,
        quorum=2,
        max_retries=1,
        seed=seed,
        training={
            "model_type": "cnn",
            "epochs": 1,
            "learning_rate": 0.005,
            "batch_size": 64,
            "n_features": n_features,
            "window": window,
        },
        privacy={"enabled": True, "mode": "central", "noise_multiplier": 0.01, "clip_norm": 5.0},
        robustness={"enabled": True, "aggregation": "trimmed_mean", "min_clients": 3},
    )
    base.update(overrides)
    return CampaignConfig.model_validate(base)


@dataclass
class ServiceProcesses:
    """The four services as separate `pdmfed service` processes (real deployment shape)."""

    env: dict[str, str]
    root: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def start(self, name: str) -> subprocess.Popen:
        state = self.root / "state" / name
        state.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        env = {
            **self.env,
            "PDMFED_STATE_DIR": str(state),
            "PDMFED_SERVICE_ID": name,
            **self.extra_env.get(name, {}),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "federation.cli", "service", name],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> dict[str, int | None]:
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 20
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = None
        return codes

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


def service_env(
    amqp_url: str,
    prefix: str,
    keys: Path,
    trust_dir: Path,
    *,
    redis_url: str | None,
    registry: Path,
) -> dict[str, str]:
    """Environment of a deployed service: secrets and wiring come from here, never argv."""
    import secrets as _secrets

    from federation.runtime.launch import ensure_identities
    from federation.runtime.registry import SERVICE_NAMES
    from federation.runtime.roles import write_roles_file

    ensure_identities(keys, [*SERVICE_NAMES, "orchestrator"])
    write_roles_file(keys, {s: s for s in [*SERVICE_NAMES, "orchestrator"]})  # as `keys init` does
    (keys / "factories").mkdir(exist_ok=True)
    for pub in trust_dir.iterdir():
        (keys / "factories" / pub.name).write_bytes(pub.read_bytes())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PDMFED_")},
        "PDMFED_AMQP_URL": amqp_url,
        "PDMFED_ENCRYPTION_KEY": _secrets.token_urlsafe(32),
        "PDMFED_KEY_SALT": _secrets.token_hex(16),
        "PDMFED_KEYS_DIR": str(keys),
        "PDMFED_TOPOLOGY_PREFIX": prefix,
        "PDMFED_DATASITE_REGISTRY": str(registry),
        "PDMFED_LOG_LEVEL": "INFO",
    }
    if redis_url:
        env["PDMFED_REDIS_URL"] = redis_url
    return env


async def orchestrate(
    env: dict[str, str],
    cfg: CampaignConfig,
    state_dir: Path,
    *,
    on_event=None,
    timeout: float = 420,
    settle_s: float = 8.0,
):
    """Drive a campaign against service processes from the outside, like `pdmfed campaign`."""
    import asyncio

    from federation.bus.middleware import SecureEndpoint
    from federation.config import Settings
    from federation.monitoring import Metrics
    from federation.orchestrator.client import CampaignClient
    from federation.runtime.launch import make_bus, make_sealer, sender_roles
    from prometheus_client import CollectorRegistry

    settings = Settings(
        amqp_url=env["PDMFED_AMQP_URL"],
        encryption_key=env["PDMFED_ENCRYPTION_KEY"],
        key_salt=env["PDMFED_KEY_SALT"],
        keys_dir=Path(env["PDMFED_KEYS_DIR"]),
        topology_prefix=env["PDMFED_TOPOLOGY_PREFIX"],
        state_dir=state_dir,
        redis_url=None,
    )
    bus = make_bus(settings, "orchestrator")
    for _ in range(60):  # the services declare the topology as they come up
        try:
            await bus.start()
            break
        except Exception:
            await asyncio.sleep(0.5)
    sealer = make_sealer(settings, "orchestrator")
    client = CampaignClient(
        bus,
        SecureEndpoint(
            bus,
            sealer,
            Metrics("orchestrator", CollectorRegistry()),
            "orchestrator",
            roles=sender_roles(settings),
        ),
    )
    client.on_event = on_event
    await client.listen()
    await asyncio.sleep(
        settle_s
    )  # let every service finish starting (the connector imports PySyft)
    await client.start_campaign(cfg)
    try:
        return await client.wait(cfg.campaign_id, timeout)
    finally:
        await bus.close()
        await delete_topology_async(settings.amqp_url, settings.topology_prefix)


async def delete_topology_async(amqp_url: str, prefix: str) -> None:
    """Remove a test's exchanges and queues from the broker."""
    from federation.bus.rabbitmq import RabbitBus
    from federation.bus.topology import DEFAULT_TOPOLOGY

    bus = RabbitBus(
        amqp_url, service="cleanup", topology=DEFAULT_TOPOLOGY.with_prefix(prefix), declare=False
    )
    await bus.start()
    try:
        await bus.delete_topology()
    finally:
        await bus.close()


def delete_topology(amqp_url: str, prefix: str) -> None:
    """Synchronous delete_topology_async."""
    import asyncio

    asyncio.run(delete_topology_async(amqp_url, prefix))
