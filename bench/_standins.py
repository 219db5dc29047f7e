"""In-process datasite stand-ins and a campaign harness timing rounds through the real services.

The stand-ins have the seed's comm-manager methods (the connector cannot tell them from
PySyftCommunicationManager): ``TrainingDatasites`` really trains with ``train_local``;
``SleepingDatasites`` returns a precomputed delta of the model's exact shape after a fixed
"training" time, so a 10M-parameter round costs no CPU at the datasites.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "TrainingDatasites",
    "SleepingDatasites",
    "model_template",
    "cnn_features_for",
    "run_campaign",
]


def model_template(kind: str, n_features: int, window: int) -> dict[str, torch.Tensor]:
    """The campaign's initial state dict, built exactly as trainer-dispatch builds it."""
    from federation.ml.models import build_model

    torch.manual_seed(0)
    model = build_model(kind, n_features, window)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def cnn_features_for(params: int, window: int = 30) -> int:
    """n_features that makes the ``cnn`` model about ``params`` parameters (first conv dominates)."""
    fixed = (32 * 32 * 5 + 32) + (32 * 8 * 3 + 8) + (8 * window * 64 + 64) + 65 + 32
    return max(1, round((params - fixed) / (32 * 5)))


class _Base:
    """What the connector calls: connect, send the model, train, report status; each stand-in
    signs its delta with its own factory key, as a datasite does, so security checks it."""

    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.models: dict[str, dict] = {}
        self.train_times: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()
        self._identities: dict[str, Any] = {}

    def _identity(self, datasite_id: str) -> Any:
        from federation.crypto.signing import SigningIdentity

        with self._lock:
            if datasite_id not in self._identities:
                self._identities[datasite_id] = SigningIdentity.generate(datasite_id)
            return self._identities[datasite_id]

    def write_factory_keys(self, factories_dir: Path, ids: list[str]) -> None:
        """Write ``<datasite_id>.pub`` for each stand-in: the security service's factory trust."""
        factories_dir.mkdir(parents=True, exist_ok=True)
        for ds in ids:
            (factories_dir / f"{ds}.pub").write_bytes(self._identity(ds).public_pem())

    def _signed(
        self, result: dict, training_config: dict, datasite_id: str, digest: str | None = None
    ) -> dict:
        """``result`` with the factory signature over its delta, bound like a datasite's;
        ``digest``: the delta's tensor digest when already known (a fixed delta)."""
        from federation.crypto.signing import sign_digest
        from federation.datasite.signing import bound_digest, sign_tensors

        identity = self._identity(datasite_id)
        round_num = int(training_config["round_number"])
        bound = {
            "campaign_id": str(training_config.get("campaign_id", "")),
            "model_version": int(training_config.get("model_version", 0)),
        }
        if digest is None:
            _, signature = sign_tensors(identity, "delta", result["delta"], round_num, **bound)
        else:
            signature = sign_digest(
                identity, bound_digest("delta", digest, round_num, identity.sender, **bound)
            )
        return {**result, "factory_signature": signature, "factory_key_id": datasite_id}

    def _raw_windows(self, datasite_id: str) -> np.ndarray:
        """The site's raw windows (n, window, F) whose statistics round 0 sums."""
        raise NotImplementedError

    def _reported_stats(self, datasite_id: str, stats: Any) -> dict:
        """What the datasite reports of its windows' statistics: the truth (a compromised
        factory's stand-in overrides this)."""
        return stats.to_dict()

    def request_stats(self, stats_config: dict, datasite_id: str) -> dict:
        """Round 0 as a datasite answers it: exact statistics of its windows, signed."""
        from federation.datasite.job import feature_columns
        from federation.datasite.signing import sign_stats
        from federation.ml.fedstats import window_stats

        X = self._raw_windows(datasite_id)
        stats = self._reported_stats(datasite_id, window_stats(X, feature_columns(X.shape[2])))
        campaign_id = str(stats_config.get("campaign_id", ""))
        signature = sign_stats(self._identity(datasite_id), stats, campaign_id=campaign_id)
        return {
            "stats": stats,
            "stats_signature": signature,
            "factory_key_id": datasite_id,
            "datasite_id": datasite_id,
            "campaign_id": campaign_id,
            "round_number": 0,
        }

    def is_connected(self, datasite_id: str) -> bool:
        return datasite_id in self.connected

    def connect_to_datasite(self, datasite_url: str, credentials: dict) -> bool:
        self.connected.add(credentials["datasite_id"])
        return True

    def send_model(self, model_parameters: dict, datasite_id: str) -> bool:
        self.models[datasite_id] = model_parameters
        return True

    def get_connection_status(self) -> dict[str, str]:
        return {d: "connected" for d in self.connected}

    def check_connection(self, datasite_id: str) -> bool:
        return datasite_id in self.connected

    def datasite_answers(self, url: str) -> bool:
        return True

    def disconnect_from_datasite(self, datasite_id: str) -> bool:
        self.connected.discard(datasite_id)
        return True

    def _record(self, round_num: int, datasite_id: str, seconds: float) -> None:
        with self._lock:
            self.train_times[(round_num, datasite_id)] = seconds


class TrainingDatasites(_Base):
    """Real local training (``train_local``) on each site's own partition."""

    def __init__(self, partitions: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__()
        self.partitions = partitions

    def _raw_windows(self, datasite_id: str) -> np.ndarray:
        return np.asarray(self.partitions[datasite_id][0])

    def request_training(self, training_config: dict, datasite_id: str) -> dict:
        from federation.datasite.job import normalised_features
        from federation.ml.train import train_local

        X, y = self.partitions[datasite_id]
        start = time.perf_counter()
        config = {k: v for k, v in training_config.items()
                  if k not in ("campaign_id", "model_version", "normalizer")}  # fmt: skip
        if training_config.get("normalizer"):  # as the datasite job: z-score with round 0's stats
            X = normalised_features(X, training_config["normalizer"])
        result = train_local(self.models[datasite_id], X, y, config, seed=config.get("seed", 0))
        self._record(training_config["round_number"], datasite_id, time.perf_counter() - start)
        global_state = self.models[datasite_id]
        update = result["model_update"]
        result["delta"] = {
            k: (update[k].to(torch.float32) - global_state[k].to(torch.float32))
            if update[k].is_floating_point()
            else update[k]
            for k in global_state
        }
        return self._signed(result, training_config, datasite_id)


class SleepingDatasites(_Base):
    """Returns a fixed random delta of the model's shape after ``train_s`` seconds."""

    def __init__(
        self, template: dict[str, torch.Tensor], ids: list[str], train_s: float, scale: float = 1e-3
    ) -> None:
        super().__init__()
        self.train_s = train_s
        gen = torch.Generator().manual_seed(7)
        self.deltas = {
            ds: {
                k: (torch.randn(v.shape, generator=gen) * scale).to(v.dtype)
                if v.is_floating_point()
                else torch.zeros_like(v)
                for k, v in template.items()
            }
            for ds in ids
        }
        # Hashed once: a datasite hashes its update on its own machine, not on the cores the
        # federation's services share here (the per-round signature still binds round,
        # campaign and base model).
        from federation.wire.codec import tensor_digest

        self.digests = {ds: tensor_digest(delta) for ds, delta in self.deltas.items()}

    def _raw_windows(self, datasite_id: str) -> np.ndarray:
        # no data: a fixed small window set per site (its normaliser is not used)
        return np.arange(12, dtype=np.float32).reshape(2, 3, 2) + len(datasite_id)

    def request_training(self, training_config: dict, datasite_id: str) -> dict:
        start = time.perf_counter()
        if self.train_s > 0:
            time.sleep(self.train_s)
        seconds = time.perf_counter() - start
        self._record(training_config["round_number"], datasite_id, seconds)
        result = {
            "delta": self.deltas[datasite_id],
            "num_samples": 100,
            "loss": 1.0,
            "rmse": 1.0,
            "accuracy": 0.0,
            "training_time": seconds,
        }
        return self._signed(result, training_config, datasite_id, self.digests[datasite_id])


#: The services that run as their own `pdmfed service` processes in the deployment shape; the
#: connector stays in the harness, which owns the in-process datasite stand-ins.
SEPARATE_SERVICES = ("trainer-dispatch", "security", "aggregator")


class _ServiceProcesses:
    """`python -m federation.cli service <name>` processes on the harness's topology and keys."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, names: tuple[str, ...], timeout: float = 120.0) -> None:
        for name in names:
            state = self.root / "state" / name
            state.mkdir(parents=True, exist_ok=True)
            with open(self.root / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "federation.cli", "service", name],
                    env={**self.env, "PDMFED_STATE_DIR": str(state)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + timeout
        for (
            name,
            proc,
        ) in self.procs.items():  # each logs "<name> started (queue ...)" when consuming
            while "started (queue" not in self.log(name):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"service {name} did not start:\n{self.log(name)[-2000:]}")
                time.sleep(0.1)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _process_settings(
    state_dir: Path,
    amqp_url: str,
    prefix: str,
    state_url: str | None = None,
    claim_check: bool = False,
) -> tuple[Any, dict[str, str]]:
    """Settings for the harness and the environment of the service processes: one fresh
    passphrase, salt and key directory for the run, handed over in the environment only;
    with ``state_url``, every service keeps its state in that PostgreSQL database and its
    large values in one blob directory of the run; with ``claim_check``, updates and models
    travel by reference through one claim directory of the run (PDMFED_CLAIM_DIR, which the
    harness's orchestrator mounts too: PDMFED_CLAIM_MODELS)."""
    import secrets

    from federation.config import Settings
    from federation.runtime.launch import ensure_identities
    from federation.runtime.registry import SERVICE_NAMES
    from federation.runtime.roles import write_roles_file

    keys = state_dir.parent / "keys"
    senders = [*SERVICE_NAMES, "orchestrator"]
    ensure_identities(keys, senders)
    write_roles_file(keys, {sender: sender for sender in senders})  # each sender id is its role
    passphrase, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PDMFED_")},
        "PDMFED_AMQP_URL": amqp_url,
        "PDMFED_ENCRYPTION_KEY": passphrase,
        "PDMFED_KEY_SALT": salt,
        "PDMFED_KEYS_DIR": str(keys),
        "PDMFED_TOPOLOGY_PREFIX": prefix,
        "PDMFED_LOG_LEVEL": "INFO",
    }
    blobs = state_dir.parent / "blobs"
    if state_url:
        env.update({"PDMFED_STATE_URL": state_url, "PDMFED_BLOB_DIR": str(blobs)})
    claims = state_dir.parent / "claims" if claim_check else None
    if claims is not None:  # the orchestrator (this harness) mounts it too: models as well
        env.update({"PDMFED_CLAIM_DIR": str(claims), "PDMFED_CLAIM_MODELS": "true"})
    settings = Settings(
        claim_dir=claims,
        claim_models=claims is not None,
        state_url=state_url,
        blob_dir=blobs if state_url else None,
        amqp_url=amqp_url,
        encryption_key=passphrase,
        key_salt=salt,
        keys_dir=keys,
        topology_prefix=prefix,
        state_dir=state_dir,
        redis_url=None,
    )
    return settings, env


async def _run(
    comm: _Base,
    cfg: Any,
    amqp_url: str | None,
    prefix: str,
    timeout: float,
    state_dir: Path,
    processes: bool = False,
    state_url: str | None = None,
    claim_check: bool = False,
) -> dict[str, Any]:
    from federation.bus.topology import Topology
    from federation.config import Settings
    from federation.datasite_registry import DatasiteRegistry, write_registry
    from federation.orchestrator.embedded import EmbeddedFederation

    topology = Topology().with_prefix(prefix)
    # the connector's own registry: stand-in URLs it never dials (the stand-ins train in-process)
    registry = DatasiteRegistry.load(
        write_registry(
            state_dir.parent / "registry",
            {
                ds: (f"http://stand-in/{ds}", "connector@pdm-factory.com", "bench-stand-in")
                for ds in cfg.cohort
            },
        )
    )
    separate = None
    if processes:
        if not amqp_url:
            raise ValueError("service processes need RabbitMQ")
        settings, env = _process_settings(state_dir, amqp_url, prefix, state_url, claim_check)
        from federation.runtime.trust import FACTORIES_DIR

        comm.write_factory_keys(Path(env["PDMFED_KEYS_DIR"]) / FACTORIES_DIR, cfg.cohort)
        separate = _ServiceProcesses(state_dir.parent, env)
        fed = EmbeddedFederation(
            settings,
            comm_manager=comm,
            datasite_registry=registry,
            topology=topology,
            services=("connector",),
        )
    else:
        settings = Settings(
            demo=True,
            state_dir=state_dir,
            amqp_url=amqp_url,
            redis_url=None,
            state_url=state_url,
            claim_dir=state_dir.parent / "claims" if claim_check else None,
            claim_models=claim_check,
        )
        fed = EmbeddedFederation(
            settings, comm_manager=comm, datasite_registry=registry, topology=topology
        )
    marks: dict[str, dict[int, float]] = {"round.open": {}, "round.completed": {}}
    consumed: dict[int, float] = {}  # round -> wire bytes the four services had consumed by its end
    await fed.start()  # declares the topology before the other processes attach to it
    try:
        if separate is not None:
            await asyncio.to_thread(separate.start, SEPARATE_SERVICES)
        assert fed.client is not None

        def on_event(kind: str, payload: dict, record: Any) -> None:
            if kind in marks:
                marks[kind].setdefault(int(payload["round_num"]), time.perf_counter())
            if kind == "round.completed":
                consumed.setdefault(int(payload["round_num"]), _bytes_consumed(fed.registry))

        fed.client.on_event = on_event
        start = time.perf_counter()
        record = await fed.run_campaign(cfg, timeout=timeout)
        total = time.perf_counter() - start
    finally:
        if separate is not None:
            await asyncio.to_thread(separate.stop)
        await fed.stop()
        if amqp_url:
            from federation.bus.rabbitmq import RabbitBus

            cleanup = RabbitBus(amqp_url, service="bench-cleanup", topology=topology, declare=False)
            await cleanup.start()
            await cleanup.delete_topology()
            await cleanup.close()
    return {
        "start": start,
        "total_s": total,
        "marks": marks,
        "record": record,
        "consumed": consumed,
    }


def _bytes_consumed(registry: Any) -> float:
    """Wire bytes every service has consumed so far (pdmfed_message_bytes_total, direction in)."""
    total = 0.0
    for metric in registry.collect():
        if metric.name == "pdmfed_message_bytes":
            total += sum(
                s.value
                for s in metric.samples
                if s.name.endswith("_total") and s.labels.get("direction") == "in"
            )
    return total


def run_campaign(
    comm: _Base,
    *,
    model_type: str,
    n_features: int,
    window: int,
    ids: list[str],
    rounds: int,
    amqp_url: str | None,
    prefix: str,
    timeout: float = 900.0,
    training: dict | None = None,
    processes: bool = False,
    state_url: str | None = None,
    claim_check: bool = False,
) -> dict[str, Any]:
    """Run a campaign of ``rounds`` rounds; per round: wall time, slowest site's training time.

    ``state_url``: the services keep their state in that PostgreSQL database (else SQLite).
    ``claim_check``: updates travel by reference through a claim directory of the run.

    Round r's wall time is completed(r) - completed(r - 1) (round 1: from campaign.start): the
    whole cycle of dispatch opening the round, train.request, training, update.raw, security
    screening, aggregation and round.completed, as the orchestrator's listener sees it.
    """
    from federation.campaign import CampaignConfig

    cfg = CampaignConfig.model_validate(
        {
            "campaign_id": f"{prefix}-campaign",
            "datasites": list(ids),
            "rounds": rounds,
            "round_timeout_s": timeout,
            "quorum": min(2, len(ids)),
            "training": {
                "model_type": model_type,
                "n_features": n_features,
                "window": window,
                "epochs": 1,
                **(training or {}),
            },
        }
    )
    with tempfile.TemporaryDirectory(prefix="pdmfed-bench-") as tmp:
        out = asyncio.run(
            _run(
                comm,
                cfg,
                amqp_url,
                prefix,
                timeout,
                Path(tmp) / "state",
                processes,
                state_url,
                claim_check,
            )
        )
    record = out["record"]
    done = out["marks"]["round.completed"]
    if record.completed is None or len(done) < rounds:
        raise RuntimeError(f"campaign ended early: {record.completed}, rounds seen {sorted(done)}")
    per_round = []
    previous = out["start"]
    consumed, consumed_before = out["consumed"], 0.0
    for r in range(1, rounds + 1):
        wall = done[r] - previous
        previous = done[r]
        times = [t for (rn, _), t in comm.train_times.items() if rn == r]
        rec = next(x for x in record.rounds if x["round_num"] == r)
        per_round.append(
            {
                "round": r,
                "wall_s": wall,
                "training_s": max(times) if times else 0.0,
                "training_sum_s": sum(times),
                "participants": len(rec["participants"]),
                "rejected": len(rec["rejected"]),
                "service_bytes_in": consumed.get(r, consumed_before) - consumed_before,
            }
        )
        consumed_before = consumed.get(r, consumed_before)
    return {"rounds": per_round, "total_s": out["total_s"], "completed": record.completed}
