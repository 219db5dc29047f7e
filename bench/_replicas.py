"""N processes of every service over one RabbitMQ topology and one PostgreSQL database; kill -9.

Used by tests/integration/replicas and bench/bench_replicas.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
AMQP_URL = os.environ.get("PDMFED_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: Parameters of the campaign's model (the issue's figure is 10M; the default keeps a 2-core
#: machine's run to minutes, PDMFED_REPLICA_TEST_PARAMS=10000000 runs the issue's size).
MODEL_PARAMS = int(os.environ.get("PDMFED_REPLICA_TEST_PARAMS", "2000000"))
SERVICES = ("trainer-dispatch", "security", "aggregator", "connector")
#: The services' message limit: an update of the default 2M-parameter model is 4+ chunks.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
REPLICAS = 2
#: Longest a teardown step (stopping the orchestrator, deleting the topology) may take.
TEARDOWN_S = 60.0


@dataclass
class Replica:
    """One service process (restarted under the same name after a kill)."""

    name: str
    index: int
    proc: subprocess.Popen | None = None
    log_offset: int = 0
    starts: int = 0

    @property
    def key(self) -> str:
        return f"{self.name}-{self.index}"


@dataclass
class Cluster:
    """``replicas`` processes of each service sharing ``env`` (broker topology, database, keys)."""

    root: Path
    env: dict[str, str]
    count: int = REPLICAS
    replicas: dict[str, Replica] = field(default_factory=dict)
    kills: list[tuple[int, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log_path(self, key: str) -> Path:
        return self.root / f"{key}.log"

    def log(self, key: str) -> str:
        path = self.log_path(key)
        return path.read_text(errors="replace") if path.exists() else ""

    def launch(self, replica: Replica) -> None:
        state = self.root / "state" / replica.key
        state.mkdir(parents=True, exist_ok=True)
        if replica.name == "connector":
            cmd = [sys.executable, str(HERE / "_standin_connector.py")]
        else:
            cmd = [sys.executable, "-m", "federation.cli", "service", replica.name]
        path = self.log_path(replica.key)
        replica.log_offset = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as log:
            replica.proc = subprocess.Popen(
                cmd,
                env={**self.env, "PDMFED_STATE_DIR": str(state)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        replica.starts += 1

    def wait_started(self, replica: Replica, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while "started (queue" not in self.log(replica.key)[replica.log_offset :]:
            assert replica.proc is not None
            if replica.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{replica.key} did not start:\n{self.log(replica.key)[-3000:]}")
            time.sleep(0.2)

    def start_all(self) -> None:
        for name in SERVICES:
            for index in range(1, self.count + 1):
                replica = Replica(name, index)
                self.replicas[replica.key] = replica
                self.launch(replica)
        for replica in self.replicas.values():
            self.wait_started(replica)

    def kill_and_restart(self, key: str, round_num: int) -> None:
        """SIGKILL one replica (no shutdown at all), then start it again as an orchestrator would."""
        replica = self.replicas[key]
        with self.lock:
            assert replica.proc is not None
            os.killpg(replica.proc.pid, signal.SIGKILL)
            replica.proc.wait(timeout=30)
            self.kills.append((round_num, key, time.time()))
            self.launch(replica)

    def stop_all(self) -> None:
        procs = [r.proc for r in self.replicas.values() if r.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def model_shape(params: int, kind: str = "cnn") -> tuple[str, int, int]:
    """(model kind, n_features, window): a ``cnn`` with about ``params`` parameters, or the
    C-MAPSS ``hybrid`` (14 features, window 30: 18,561 parameters)."""
    from bench._standins import cnn_features_for

    if kind == "hybrid":
        return "hybrid", 14, 30
    return "cnn", cnn_features_for(params), 30


def prepare(
    root: Path,
    state_url: str,
    ids: list[str],
    samples: dict[str, int],
    train_s: float,
    params: int = MODEL_PARAMS,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    kind: str = "cnn",
    claim_check: bool = False,
) -> tuple[Any, dict[str, str], str]:
    """Keys, roles, factory keys, the connectors' registry; (settings, env, topology prefix).

    ``claim_check``: updates and models travel by reference through ``root/claims``, which
    this process's orchestrator mounts too."""
    from federation.crypto.signing import SigningIdentity
    from federation.datasite_registry import write_registry
    from federation.runtime.trust import FACTORIES_DIR

    from bench._standins import _process_settings

    prefix = f"replicas-{uuid.uuid4().hex[:8]}"
    settings, env = _process_settings(root / "state", AMQP_URL, prefix, state_url, claim_check)
    factory_private = root / "factory-keys"
    factories = Path(env["PDMFED_KEYS_DIR"]) / FACTORIES_DIR
    factories.mkdir(parents=True, exist_ok=True)
    for ds in ids:
        identity = SigningIdentity.load_or_create(factory_private, ds)
        (factories / f"{ds}.pub").write_bytes(identity.public_pem())
    registry = write_registry(
        root / "registry",
        {ds: (f"http://stand-in/{ds}", "connector@pdm-factory.com", "stand-in") for ds in ids},
    )
    kind, n_features, window = model_shape(params, kind)
    env.update(
        {
            "PDMFED_DATASITE_REGISTRY": str(registry),
            "REPLICA_FACTORY_KEYS": str(factory_private),
            "REPLICA_MODEL": f"{kind}:{n_features}:{window}",
            "REPLICA_SAMPLES": ",".join(f"{ds}={n}" for ds, n in samples.items()),
            "REPLICA_TRAIN_S": str(train_s),
            "PDMFED_MAX_MESSAGE_BYTES": str(max_message_bytes),
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        }
    )
    return settings, env, prefix


def campaign_config(
    campaign_id: str,
    ids: list[str],
    rounds: int,
    timeout_s: float,
    params: int = MODEL_PARAMS,
    kind: str = "cnn",
) -> Any:
    """A campaign of ``rounds`` rounds on a ``params``-parameter CNN (or the hybrid model):
    every update accepted."""
    from federation.campaign import CampaignConfig

    kind, n_features, window = model_shape(params, kind)
    return CampaignConfig.model_validate(
        {
            "campaign_id": campaign_id,
            "datasites": list(ids),
            "rounds": rounds,
            "round_timeout_s": timeout_s,
            "quorum": len(ids),
            "max_retries": 3,
            "training": {
                "model_type": kind,
                "n_features": n_features,
                "window": window,
                "epochs": 1,
            },
            "privacy": {"enabled": False},
            "robustness": {"enabled": False, "rule": {"name": "fedavg"}},
        }
    )


async def run_campaigns(
    settings: Any,
    prefix: str,
    configs: list[Any],
    cluster: Cluster,
    kill_each_round: bool,
    timeout: float,
    seed: int,
    on_event: Any = None,
    kill_window_s: float = 4.0,
) -> list[Any]:
    """Run the campaigns through the cluster from an orchestrator in this process; with
    ``kill_each_round``, SIGKILL a random replica at a random point of every round: up to
    ``kill_window_s`` after it opened (keep it below the shortest round), or at its completion
    if that comes first."""
    from federation.bus.topology import Topology
    from federation.orchestrator.embedded import EmbeddedFederation

    topology = Topology().with_prefix(prefix)
    fed = EmbeddedFederation(settings, topology=topology, services=())
    rng = random.Random(seed)
    opened: asyncio.Queue[int] = asyncio.Queue()
    completed: dict[int, asyncio.Event] = {}
    killers: list[asyncio.Task] = []
    await fed.start()
    try:
        await asyncio.to_thread(cluster.start_all)
        assert fed.client is not None

        def events(kind: str, payload: dict, record: Any) -> None:
            if kind == "round.open":
                opened.put_nowait(int(payload["round_num"]))
            if kind == "round.completed":
                completed.setdefault(int(payload["round_num"]), asyncio.Event()).set()
            if on_event is not None:
                on_event(kind, payload, record)

        fed.client.on_event = events

        async def killer() -> None:
            seen: set[int] = set()
            while True:
                rnd = await opened.get()
                if rnd in seen:
                    continue
                seen.add(rnd)
                done = completed.setdefault(rnd, asyncio.Event())
                with contextlib.suppress(TimeoutError):  # anywhere in the round
                    await asyncio.wait_for(done.wait(), rng.uniform(0.0, kill_window_s))
                key = rng.choice(sorted(cluster.replicas))
                await asyncio.to_thread(cluster.kill_and_restart, key, rnd)

        if kill_each_round:
            killers.append(asyncio.create_task(killer()))
        for cfg in configs:
            await fed.client.start_campaign(cfg)
        return list(
            await asyncio.gather(*(fed.client.wait(c.campaign_id, timeout) for c in configs))
        )
    finally:
        for task in killers:
            task.cancel()
        await asyncio.gather(*killers, return_exceptions=True)
        await asyncio.to_thread(cluster.stop_all)
        # Bounded: a teardown step that hangs must not hold the test (or CI) past its timeout.
        await asyncio.wait_for(fed.stop(), TEARDOWN_S)
        await asyncio.wait_for(_delete_topology(topology), TEARDOWN_S)


async def _delete_topology(topology: Any) -> None:
    """Remove the run's queues and exchanges from the broker."""
    from federation.bus.rabbitmq import RabbitBus

    cleanup = RabbitBus(AMQP_URL, service="replicas-cleanup", topology=topology, declare=False)
    await cleanup.start()
    try:
        await cleanup.delete_topology()
    finally:
        await cleanup.close()
