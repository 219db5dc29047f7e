"""Resilience: services killed with SIGKILL mid-round and restarted; a datasite dying mid-campaign."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    ORCH_EMAIL,
    ORCH_PASSWORD_ENV,
    ServiceProcesses,
    campaign_config,
    orchestrate,
    service_env,
    unique_prefix,
)
from federation.config import Settings
from federation.crypto.signing import TrustStore

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "crypto"))
from redis_helpers import acl_redis  # noqa: E402 - a private redis-server with per-role ACL users


@pytest.fixture
def replay_store(tmp_path):
    """The services' shared replay store: a Redis that requires each role's own ACL user."""
    with acl_redis(tmp_path / "redis") as server:
        yield server


def test_when_each_service_is_killed_mid_round_and_restarted__campaign_completes_with_every_update_once(
    fleet, amqp_url, tmp_path, replay_store
):
    from services.trainer_dispatch.handlers import initial_model_state  # noqa: F401 - import check

    prefix = unique_prefix("kill")
    env = service_env(
        amqp_url,
        prefix,
        tmp_path / "keys",
        fleet.trust_dir,
        redis_url=replay_store.url,
        registry=fleet.registry_file,
    )
    order = ["connector", "trainer-dispatch", "security", "aggregator"]
    procs = ServiceProcesses(
        env,
        tmp_path,
        extra_env={name: {"PDMFED_REDIS_PASSWORD": replay_store.passwords[name]} for name in order},
    )
    for name in order:
        procs.start(name)
    cfg = campaign_config(
        fleet.sites,
        campaign_id="e2e-kill",
        rounds=len(order),
        seed=9,
        n_features=fleet.data.n_features,
        window=fleet.data.window,
        round_timeout_s=240,
        privacy={"enabled": False},
    )
    rng = random.Random(1234)
    kills: list[tuple[int, str, float]] = []

    def kill_and_restart(round_num: int) -> None:
        name = order[round_num - 1]
        delay = rng.uniform(0.0, 2.0)
        time.sleep(delay)
        procs.kill9(name)
        kills.append((round_num, name, delay))
        time.sleep(0.5)
        procs.start(name)

    def on_event(kind, payload, rec) -> None:
        if kind == "round.open" and payload["round_num"] <= len(order):
            threading.Thread(
                target=kill_and_restart, args=(payload["round_num"],), daemon=True
            ).start()

    try:
        record = asyncio.run(orchestrate(env, cfg, tmp_path / "orchestrator", on_event=on_event))
    finally:
        codes = procs.stop_all()
    logs = {n: procs.log(n)[-3000:] for n in order}
    assert record.completed is not None, logs
    assert record.completed["reason"] == "max_rounds", logs
    assert sorted(name for _, name, _ in kills) == sorted(order)
    rounds = record.rounds
    assert [r["round_num"] for r in rounds] == [1, 2, 3, 4]
    expected_samples = sum(len(p["y"]) for p in fleet.partitions.values())
    for r in rounds:
        # no update lost, none counted twice
        assert sorted(r["participants"]) == sorted(cfg.cohort), (r, logs)
        assert r["metrics"]["num_samples"] == expected_samples, r
    assert all(c == 0 for c in codes.values()), (codes, logs)  # SIGTERM: clean shutdown


def test_when_a_datasite_dies_mid_campaign__its_round_closes_with_the_others_and_the_campaign_continues(
    fleet, tmp_path
):
    from federation.communication import PySyftCommunicationManager
    from federation.crypto.signing import SigningIdentity
    from federation.datasite import launch_datasite
    from federation.datasite_registry import DatasiteRegistry, write_registry
    from federation.orchestrator.embedded import EmbeddedFederation

    doomed_id = "rail_lyon_depot"
    part = fleet.partitions["aerospace_seattle_assembly"]
    doomed = launch_datasite(
        doomed_id,
        0,
        part,
        admin_password=secrets.token_urlsafe(18),
        signing_key_dir=tmp_path / "doomed-key",
        datasite_id=doomed_id,
        orchestrator_email=ORCH_EMAIL,
        orchestrator_password=os.environ[ORCH_PASSWORD_ENV],
    )
    trust = TrustStore.from_dir(fleet.trust_dir)
    trust.add(doomed_id, SigningIdentity.load(tmp_path / "doomed-key", doomed_id).public_bytes())
    sites = {ds: fleet.sites[ds] for ds in ("automotive_detroit_main", "chemical_houston_reactor")}
    sites[doomed_id] = doomed
    cfg = campaign_config(
        sites,
        campaign_id="e2e-datasite-dies",
        rounds=3,
        seed=4,
        n_features=fleet.data.n_features,
        window=fleet.data.window,
        round_timeout_s=45,
        max_retries=1,
        # the two survivors' updates are screened as a cohort of two
        robustness={"enabled": True, "aggregation": "trimmed_mean", "min_clients": 2},
    )

    def on_event(kind, payload, rec) -> None:
        if kind == "round.completed" and payload["round_num"] == 1:
            doomed.kill()

    async def scenario():
        comm = PySyftCommunicationManager(request_timeout_s=10, training_timeout_s=20)
        settings = Settings(
            demo=True, state_dir=tmp_path / "state", keys_dir=tmp_path / "keys", redis_url=None
        )
        registry = DatasiteRegistry.load(
            write_registry(
                tmp_path / "registry",
                {ds: (h.url, ORCH_EMAIL, os.environ[ORCH_PASSWORD_ENV]) for ds, h in sites.items()},
            )
        )
        fed = EmbeddedFederation(
            settings, comm_manager=comm, datasite_registry=registry, factory_trust=trust
        )
        await fed.start()
        fed.client.on_event = on_event
        try:
            return await fed.run_campaign(cfg, timeout=240)
        finally:
            await fed.stop()
            comm.cleanup_all_connections()

    try:
        record = asyncio.run(scenario())
    finally:
        doomed.stop()
    assert record.completed["reason"] == "max_rounds"
    r1, r2, r3 = record.rounds
    assert doomed_id in r1["participants"]
    for r in (r2, r3):
        assert doomed_id in r["failed"], r
        assert sorted(r["participants"]) == ["automotive_detroit_main", "chemical_houston_reactor"]
