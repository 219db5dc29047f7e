"""Whole campaigns on real PySyft datasites: over RabbitMQ, on the in-memory bus, and under attack."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pika
import pytest
import torch
from e2e_helpers import campaign_config, delete_topology, delete_topology_async, unique_prefix
from federation.bus.topology import DEFAULT_TOPOLOGY
from federation.config import Settings
from federation.crypto.keys import KeyRing
from federation.crypto.sealer import Sealer
from federation.crypto.signing import SigningIdentity, TrustStore
from federation.ml.train import evaluate
from prometheus_client import CollectorRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _settings(tmp_path, *, amqp_url=None, prefix="pdmfed") -> Settings:
    return Settings(
        demo=True,
        amqp_url=amqp_url,
        topology_prefix=prefix,
        state_dir=tmp_path / "state",
        redis_url=None,
        keys_dir=tmp_path / "keys",
    )


async def _run_campaign(settings, fleet, cfg, *, registry=None, on_event=None, timeout=240):
    from federation.communication import PySyftCommunicationManager
    from federation.datasite_registry import DatasiteRegistry
    from federation.orchestrator.embedded import EmbeddedFederation

    comm = PySyftCommunicationManager()
    registry = registry if registry is not None else CollectorRegistry()
    fed = EmbeddedFederation(
        settings,
        comm_manager=comm,
        datasite_registry=DatasiteRegistry.load(fleet.registry_file),
        factory_trust=TrustStore.from_dir(fleet.trust_dir),
        registry=registry,
    )
    await fed.start()
    try:
        if on_event is not None:
            fed.client.on_event = on_event
        return await fed.run_campaign(cfg, timeout=timeout), registry
    finally:
        await fed.stop()
        comm.cleanup_all_connections()
        if settings.amqp_url:
            await delete_topology_async(settings.amqp_url, settings.topology_prefix)


def _value(registry, name, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _assert_every_update_accounted(record, cohort):
    assert [r["round_num"] for r in record.rounds] == list(range(1, len(record.rounds) + 1))
    for r in record.rounds:
        parts, rejected, failed = set(r["participants"]), set(r["rejected"]), set(r["failed"])
        assert parts | rejected | failed == set(cohort), r
        assert not (parts & rejected) and not (parts & failed) and not (rejected & failed), r


@pytest.fixture(scope="module")
def rabbit_and_memory_runs(fleet, amqp_url, tmp_path_factory):
    """The same campaign (same seed) once over RabbitMQ and once on the in-memory bus."""
    cfg = campaign_config(
        fleet.sites,
        campaign_id="e2e-same-seed",
        rounds=3,
        seed=3,
        n_features=fleet.data.n_features,
        window=fleet.data.window,
    )
    prefix = unique_prefix("campaign")
    rabbit_dir = tmp_path_factory.mktemp("rabbit")
    mem_dir = tmp_path_factory.mktemp("memory")
    rabbit, rabbit_reg = asyncio.run(
        _run_campaign(_settings(rabbit_dir, amqp_url=amqp_url, prefix=prefix), fleet, cfg)
    )
    memory, _ = asyncio.run(_run_campaign(_settings(mem_dir), fleet, cfg))
    return cfg, rabbit, rabbit_reg, memory


def test_when_campaign_runs_over_rabbitmq__rmse_improves_and_every_update_is_accounted(
    fleet, rabbit_and_memory_runs
):
    from services.trainer_dispatch.handlers import initial_model_state

    cfg, record, registry, _ = rabbit_and_memory_runs
    assert record.completed["reason"] == "max_rounds"
    assert len(record.rounds) == 3
    _assert_every_update_accounted(record, cfg.cohort)
    test = fleet.data.test
    before = evaluate(initial_model_state(cfg), test.X, test.y, "cnn")["rmse"]
    after = evaluate(record.final_model, test.X, test.y, "cnn")["rmse"]
    assert after < before * 0.8, (before, after)
    raw = _value(
        registry, "pdmfed_messages_published_total", service="connector", msg_type="update.raw"
    )
    aggregated = _value(registry, "pdmfed_updates_aggregated_total", campaign=cfg.campaign_id)
    rejected = _value(
        registry, "pdmfed_messages_published_total", service="security", msg_type="update.rejected"
    )
    assert raw == 9 and raw == aggregated + rejected
    eps = [r["epsilon"] for r in record.rounds]
    assert eps == sorted(eps) and eps[0] > 0


def test_when_same_campaign_runs_on_the_memory_bus__the_model_is_bit_for_bit_the_same(
    rabbit_and_memory_runs,
):
    _, rabbit, _, memory = rabbit_and_memory_runs
    assert rabbit.final_model.keys() == memory.final_model.keys()
    for k in rabbit.final_model:
        assert torch.equal(rabbit.final_model[k], memory.final_model[k]), k
    assert [r["participants"] for r in rabbit.rounds] == [r["participants"] for r in memory.rounds]


# --- attacks from outside the code --------------------------------------------------------------
class _Capture(threading.Thread):
    """A plain AMQP client (pika) that copies messages off the exchange, as an eavesdropper would."""

    def __init__(self, url: str, exchange: str, keys: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.url, self.exchange, self.keys = url, exchange, keys
        self.bodies: dict[str, list[bytes]] = {k: [] for k in keys}
        self.ready = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for k in self.keys:
            ch.queue_bind(q, self.exchange, routing_key=k)
        self.ready.set()
        while not self._halt.is_set():
            method, props, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                conn.sleep(0.05)
                continue
            self.bodies[method.routing_key].append(body)
        conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _publish_raw(url: str, exchange: str, routing_key: str, body: bytes) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            exchange, routing_key, body, pika.BasicProperties(delivery_mode=2), mandatory=True
        )
    finally:
        if conn.is_open:
            conn.close()


def _dead_letter_reasons(url: str, queue: str) -> list[str]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    reasons = []
    try:
        ch = conn.channel()
        while True:
            method, props, _ = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            headers = props.headers or {}
            reason = headers.get("x-pdmfed-reason")
            reasons.append(reason.decode() if isinstance(reason, bytes) else str(reason))
    finally:
        conn.close()
    return reasons


def test_when_outsiders_replay_tamper_forge_and_flood__each_is_rejected_counted_dead_lettered_and_campaign_completes(
    fleet, amqp_url, tmp_path
):
    prefix = unique_prefix("attack")
    settings = _settings(tmp_path, amqp_url=amqp_url, prefix=prefix)
    cfg = campaign_config(
        fleet.sites,
        campaign_id="e2e-attacks",
        rounds=3,
        seed=5,
        n_features=fleet.data.n_features,
        window=fleet.data.window,
        round_timeout_s=120,
    )
    capture = _Capture(amqp_url, prefix, ("campaign.start", "update.raw"))
    attacks_done = threading.Event()
    errors: list[BaseException] = []
    oversize_refused: list[str] = []

    def attack() -> None:
        try:
            keys = settings.keys_dir
            ring = KeyRing.from_passphrase(settings.passphrase(), settings.salt())
            connector = SigningIdentity.load(keys, "connector")
            trust = TrustStore.from_dir(keys)
            # 1. replay a captured message verbatim
            _publish_raw(amqp_url, prefix, "campaign.start", capture.bodies["campaign.start"][0])
            upd = {
                "campaign_id": cfg.campaign_id,
                "round_num": 2,
                "datasite_id": "automotive_detroit_main",
                "model_version": 1,
                "delta": {"w": torch.zeros(3)},
                "num_samples": 10,
            }
            # 2a. a captured update, one byte flipped: its id was seen, refused as a replay
            body = bytearray(capture.bodies["update.raw"][0])
            body[len(body) // 2] ^= 0x01
            _publish_raw(amqp_url, prefix, "update.raw", bytes(body))
            # 2b. a fresh genuine update with one ciphertext byte flipped (wire v2: header |
            # ciphertext + 16-byte GCM tag | 64-byte signature over header and tag): AES-GCM refuses it
            fresh = Sealer(ring, sender="connector", identity=connector, trust=trust)
            body = bytearray(fresh.seal("update.raw", upd, round_num=2)[0])
            body[len(body) - 64 - 16 - 1] ^= 0x01
            _publish_raw(amqp_url, prefix, "update.raw", bytes(body))
            # 3. forged sender: claims to be the connector, signed with a key nobody trusts
            mallory = SigningIdentity.generate("connector")
            forged = Sealer(ring, sender="connector", identity=mallory, trust=trust)
            _publish_raw(
                amqp_url, prefix, "update.raw", forged.seal("update.raw", upd, round_num=2)[0]
            )
            # 4. expired: a genuine connector message sealed an hour ago
            old = Sealer(
                ring,
                sender="connector",
                identity=connector,
                trust=trust,
                clock=lambda: time.time() - 3600,
            )
            _publish_raw(
                amqp_url, prefix, "update.raw", old.seal("update.raw", upd, round_num=2)[0]
            )
            # 5. an update for a round that is already closed
            genuine = Sealer(ring, sender="connector", identity=connector, trust=trust)
            stale = {**upd, "round_num": 1}
            _publish_raw(
                amqp_url, prefix, "update.raw", genuine.seal("update.raw", stale, round_num=1)[0]
            )
            # 6. garbage bytes
            _publish_raw(amqp_url, prefix, "update.raw", b"\x93garbage that is no envelope" * 3)
            # 7. a single message over PDMFED_MAX_MESSAGE_BYTES (20 MB): rejected by the consumer
            _publish_raw(amqp_url, prefix, "update.raw", os.urandom(20 * 1024 * 1024))
            # 8. 200 MB: over RabbitMQ's own max message size, refused by the broker itself
            try:
                _publish_raw(amqp_url, prefix, "update.raw", bytes(200 * 1024 * 1024))
            except Exception as exc:  # the broker closes the channel
                oversize_refused.append(type(exc).__name__)
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)
        finally:
            attacks_done.set()

    started = threading.Event()

    def on_event(kind, payload, rec) -> None:
        if kind == "round.completed" and payload["round_num"] == 1 and not started.is_set():
            started.set()
            threading.Thread(target=attack, daemon=True).start()

    async def scenario():
        from federation.bus.rabbitmq import RabbitBus

        bus = RabbitBus(amqp_url, service="setup", topology=DEFAULT_TOPOLOGY.with_prefix(prefix))
        await bus.start()  # declare the topology so the eavesdropper can bind
        await bus.close()
        capture.start()
        capture.ready.wait(10)
        return await _run_campaign(settings, fleet, cfg, on_event=on_event, timeout=300)

    try:
        record, registry = asyncio.run(scenario())
    finally:
        capture.stop()
    assert attacks_done.wait(60) and not errors, errors
    assert record.completed["reason"] == "max_rounds"
    _assert_every_update_accounted(record, cfg.cohort)

    def rejected(service, reason):
        return _value(registry, "pdmfed_messages_rejected_total", service=service, reason=reason)

    assert rejected("trainer-dispatch", "replay") >= 1
    assert rejected("security", "replay") >= 1  # the captured update with a flipped byte
    assert rejected("security", "integrity") >= 1  # a fresh update with a flipped ciphertext byte
    assert rejected("security", "auth") >= 1  # the forged sender
    assert rejected("security", "expired") >= 1
    assert rejected("security", "stale_round") >= 1
    assert rejected("security", "malformed") >= 1
    assert rejected("security", "oversize") >= 1
    assert oversize_refused, "RabbitMQ accepted a 200 MB message"
    # the dead-letter queue holds each rejected message with its reason
    # (the topology is deleted after the run, so read it from the registry-backed counts above and
    # from a fresh run's dead queue below)


def test_when_a_message_is_rejected__it_lands_in_the_dead_letter_queue_with_its_reason(
    amqp_url, tmp_path
):
    from federation.bus.middleware import SecureEndpoint
    from federation.monitoring import Metrics
    from federation.runtime.launch import make_bus, make_sealer, sender_roles

    prefix = unique_prefix("dlq")
    settings = _settings(tmp_path, amqp_url=amqp_url, prefix=prefix)

    async def scenario():
        bus = make_bus(settings, "security")
        await bus.start()
        try:
            from federation.runtime.launch import ensure_identities

            ensure_identities(settings.keys_dir, ["security", "trainer-dispatch"])
            endpoint = SecureEndpoint(
                bus,
                make_sealer(settings, "security"),
                Metrics("security", CollectorRegistry()),
                "security",
                roles=sender_roles(settings),
            )
            seen = []

            async def handler(kind, payload, env):
                seen.append(kind)

            await endpoint.subscribe(f"{prefix}.security", handler)
            _publish_raw(amqp_url, prefix, "update.raw", b"not an envelope")
            good = make_sealer(settings, "trainer-dispatch")
            body = good.seal("round.close", {"campaign_id": "c", "round_num": 1, "expected": []})[0]
            _publish_raw(amqp_url, prefix, "round.close", body)
            _publish_raw(amqp_url, prefix, "round.close", body)  # replay
            for _ in range(100):
                if await bus.queue_depth(f"{prefix}.dead") >= 2 and seen:
                    break
                await asyncio.sleep(0.1)
            return seen
        finally:
            await bus.close()

    try:
        seen = asyncio.run(scenario())
        reasons = _dead_letter_reasons(amqp_url, f"{prefix}.dead")
    finally:
        delete_topology(amqp_url, prefix)
    assert seen == ["round.close"]
    assert sorted(reasons) == ["malformed", "replay"]
