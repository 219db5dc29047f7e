"""Two processes of each service (and two connectors) share one campaign's work; kill -9 any of them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from replica_helpers import rabbit_unavailable, rounds_by_number

from bench._replicas import (
    MAX_MESSAGE_BYTES,
    MODEL_PARAMS,
    Cluster,
    campaign_config,
    prepare,
    run_campaigns,
)

pytestmark = pytest.mark.integration

IDS = ["f1", "f2", "f3", "f4"]
#: Different per datasite: a round's sample count says which updates were counted, how often.
SAMPLES = {"f1": 101, "f2": 202, "f3": 303, "f4": 404}
ROUNDS = 3
#: A kill lands up to this long after its round opened (or at the round's completion): below
#: the shortest round (0.5 s training + about 2 s of messaging here), so every round has one.
KILL_WINDOW_S = 2.0
#: A campaign here takes under a minute; fail well inside pytest's per-test timeout (600 s)
#: so the harness's own teardown runs and the logs are printed.
CAMPAIGN_TIMEOUT_S = 360


@pytest.fixture
def cluster_env(pg_url, tmp_path):
    reason = rabbit_unavailable()
    if reason is not None:
        pytest.skip(reason)
    settings, env, prefix = prepare(tmp_path, pg_url, IDS, SAMPLES, train_s=0.5)
    return settings, Cluster(tmp_path, env), prefix


def _check_rounds(record, rounds: int) -> None:
    assert record.completed is not None, record
    assert record.completed["reason"] == "max_rounds", record.completed
    by_round = rounds_by_number(record)
    assert sorted(by_round) == list(range(1, rounds + 1))
    for rnd, rec in by_round.items():
        assert rec["participants"] == IDS, (rnd, rec)  # nobody lost ...
        assert rec["rejected"] == {} and rec["failed"] == {}, (rnd, rec)
        # ... and nobody counted twice: the sum of distinct per-datasite sample counts
        assert rec["metrics"]["num_samples"] == sum(SAMPLES.values()), (rnd, rec)
        assert rec["model_version"] == rnd


def _logs(cluster: Cluster) -> str:
    return "\n".join(f"--- {key}\n{cluster.log(key)[-1500:]}" for key in sorted(cluster.replicas))


def test_when_two_replicas_of_every_service_run_a_chunked_campaign__every_round_counts_each_update_once(
    cluster_env,
):
    settings, cluster, prefix = cluster_env
    cfg = campaign_config(f"{prefix}-c1", IDS, ROUNDS, timeout_s=600)
    (record,) = asyncio.run(
        run_campaigns(
            settings,
            prefix,
            [cfg],
            cluster,
            kill_each_round=False,
            timeout=CAMPAIGN_TIMEOUT_S,
            seed=0,
        )
    )
    _check_rounds(record, ROUNDS)
    assert MODEL_PARAMS * 4 > 2 * MAX_MESSAGE_BYTES  # every update and model was chunked
    aggregated = cluster.log("aggregator-1") + cluster.log("aggregator-2")
    for rnd in range(1, ROUNDS + 1):  # each round aggregated once, by one of the two replicas
        assert aggregated.count(f"round {rnd} aggregated: 4 accepted") == 1, rnd


def test_when_a_random_replica_is_killed_in_every_round__the_campaign_completes_counting_each_update_once(
    cluster_env,
):
    settings, cluster, prefix = cluster_env
    seed = int(os.environ.get("PDMFED_REPLICA_KILL_SEED", "0")) or int.from_bytes(os.urandom(4))
    cfg = campaign_config(f"{prefix}-c1", IDS, ROUNDS, timeout_s=600)
    try:
        (record,) = asyncio.run(
            run_campaigns(
                settings,
                prefix,
                [cfg],
                cluster,
                kill_each_round=True,
                timeout=CAMPAIGN_TIMEOUT_S,
                seed=seed,
                kill_window_s=KILL_WINDOW_S,
            )
        )
    except Exception as exc:
        raise AssertionError(f"seed {seed}, kills {cluster.kills}\n{_logs(cluster)}") from exc
    print(f"seed {seed}: killed {[(rnd, key) for rnd, key, _ in cluster.kills]}")
    assert len({rnd for rnd, _, _ in cluster.kills}) == ROUNDS, (seed, cluster.kills)
    _check_rounds(record, ROUNDS)


def test_when_four_campaigns_run_at_once_on_the_replicas__each_completes_with_its_own_exact_rounds(
    cluster_env,
):
    settings, cluster, prefix = cluster_env
    configs = [campaign_config(f"{prefix}-c{i}", IDS, 2, timeout_s=600) for i in range(1, 5)]
    records = asyncio.run(
        run_campaigns(
            settings,
            prefix,
            configs,
            cluster,
            kill_each_round=False,
            timeout=CAMPAIGN_TIMEOUT_S,
            seed=0,
        )
    )
    assert [r.campaign_id for r in records] == [c.campaign_id for c in configs]
    for record in records:
        _check_rounds(record, 2)


def test_when_updates_travel_by_claim_check__a_campaign_with_a_kill_each_round_counts_each_once(
    pg_url, tmp_path
):
    reason = rabbit_unavailable()
    if reason is not None:
        pytest.skip(reason)
    settings, env, prefix = prepare(tmp_path, pg_url, IDS, SAMPLES, train_s=0.5, claim_check=True)
    claims = Path(env["PDMFED_CLAIM_DIR"])
    cluster = Cluster(tmp_path, env)
    cfg = campaign_config(f"{prefix}-c1", IDS, ROUNDS, timeout_s=600)
    seed = int(os.environ.get("PDMFED_REPLICA_KILL_SEED", "0")) or int.from_bytes(os.urandom(4))
    try:
        (record,) = asyncio.run(
            run_campaigns(settings, prefix, [cfg], cluster, kill_each_round=True, timeout=900,
                          seed=seed, kill_window_s=KILL_WINDOW_S)
        )  # fmt: skip
        _check_rounds(record, ROUNDS)
    except Exception as exc:
        raise AssertionError(f"seed {seed}, kills {cluster.kills}\n{_logs(cluster)}") from exc
    # Every update was sealed and written once, by the connector (kept for the retention);
    # security passed each on by a hard link to that body, the broker carried references:
    # nothing was chunked, sealed twice or refused.
    update_bytes = MODEL_PARAMS * 4
    bodies = {
        producer: [p for p in (claims / producer).iterdir() if p.suffix != ".tmp"]
        for producer in ("connector", "security")
    }
    assert len(bodies["connector"]) >= len(IDS) * ROUNDS
    assert all(p.stat().st_size > update_bytes for p in bodies["connector"])
    sealed = {p.stat().st_ino for p in bodies["connector"]}
    assert len(bodies["security"]) >= len(IDS) * ROUNDS
    assert {p.stat().st_ino for p in bodies["security"]} <= sealed
    # The global model too: dispatch sealed each round.open once, the aggregator each
    # round.completed, and the orchestrator here redeemed them from the same store.
    for producer in ("trainer-dispatch", "aggregator"):
        models = [p for p in (claims / producer).iterdir() if p.suffix != ".tmp"]
        assert len(models) >= ROUNDS and all(p.stat().st_size > update_bytes for p in models)
    assert len(record.rounds) == ROUNDS
    logs = _logs(cluster)
    assert "claim_missing" not in logs and "integrity" not in logs
