"""The four services on the in-memory bus: a campaign runs to completion, every update accounted for."""

from __future__ import annotations

import pytest
from federation.campaign import CampaignConfig
from federation.config import Settings
from federation.orchestrator.embedded import EmbeddedFederation
from services_helpers import LocalDatasites, local_registry


def _cfg(data, ids, **kw) -> CampaignConfig:
    base = dict(
        campaign_id="unit-flow",
        datasites=list(ids),
        rounds=2,
        round_timeout_s=60,
        quorum=2,
        training={
            "model_type": "cnn",
            "epochs": 1,
            "batch_size": 64,
            "n_features": data.n_features,
            "window": data.window,
            "learning_rate": 0.005,
        },
        privacy={"enabled": True, "mode": "central", "noise_multiplier": 0.5, "clip_norm": 5.0},
        robustness={"enabled": True, "aggregation": "trimmed_mean"},
    )
    base.update(kw)
    return CampaignConfig.model_validate(base)


@pytest.fixture
def settings(tmp_path):
    return Settings(demo=True, state_dir=tmp_path / "state", amqp_url=None, redis_url=None)


def _fed(settings, comm) -> EmbeddedFederation:
    return EmbeddedFederation(
        settings,
        comm_manager=comm,
        datasite_registry=local_registry(settings.state_dir / "registry", comm.partitions),
    )


async def _run(settings, comm, cfg, timeout=60):
    fed = _fed(settings, comm)
    await fed.start()
    try:
        return fed, await fed.run_campaign(cfg, timeout=timeout)
    finally:
        await fed.stop()


async def test_when_three_honest_factories_train__campaign_completes_with_every_update_counted(
    settings, tiny_partitions
):
    data, parts = tiny_partitions
    comm = LocalDatasites(parts)
    cfg = _cfg(data, list(parts))
    fed, rec = await _run(settings, comm, cfg)
    assert rec.completed["reason"] == "max_rounds"
    assert [r["round_num"] for r in rec.rounds] == [1, 2]
    for r in rec.rounds:
        assert sorted(r["participants"]) + sorted(r["rejected"]) == sorted(parts) or sorted(
            list(r["participants"]) + list(r["rejected"])
        ) == sorted(parts)
        assert r["epsilon"] is not None and r["epsilon"] > 0
    assert rec.rounds[1]["epsilon"] > rec.rounds[0]["epsilon"]
    assert len(comm.calls) == 6


async def test_when_one_factory_scales_its_update__it_is_flagged_byzantine(
    settings, tiny_partitions
):
    data, parts = tiny_partitions
    comm = LocalDatasites(parts, attack={"factory_c": 50.0})
    cfg = _cfg(data, list(parts), privacy={"enabled": False})
    _, rec = await _run(settings, comm, cfg)
    assert all("factory_c" in r["byzantine"] for r in rec.rounds)
    assert all("factory_c" not in r["participants"] for r in rec.rounds)


async def test_when_a_datasite_fails_once__it_is_retried_within_the_round(
    settings, tiny_partitions
):
    data, parts = tiny_partitions
    comm = LocalDatasites(parts)
    comm.fail_next["factory_b"] = 1
    cfg = _cfg(data, list(parts), rounds=1)
    _, rec = await _run(settings, comm, cfg)
    assert sorted(rec.rounds[0]["participants"]) == sorted(parts)
    assert [c for c in comm.calls if c[0] == "factory_b"] == [("factory_b", 1), ("factory_b", 1)]


class _SlowDatasites(LocalDatasites):
    """One factory answers long after the round's deadline."""

    def __init__(self, partitions, slow: str, delay_s: float):
        super().__init__(partitions)
        self.slow, self.delay_s = slow, delay_s

    def request_training(self, training_config, datasite_id):
        import time

        if datasite_id == self.slow:
            time.sleep(self.delay_s)
        return super().request_training(training_config, datasite_id)


async def test_when_a_factory_misses_the_deadline__round_closes_with_the_others_and_its_late_update_is_stale(
    settings, tiny_partitions
):
    data, parts = tiny_partitions
    comm = _SlowDatasites(parts, slow="factory_c", delay_s=4.0)
    # two screened updates must be enough for this campaign (the default min_clients is 3)
    cfg = _cfg(
        data,
        list(parts),
        rounds=1,
        round_timeout_s=1.5,
        max_retries=0,
        robustness={"enabled": True, "aggregation": "trimmed_mean", "min_clients": 2},
    )
    fed = _fed(settings, comm)
    await fed.start()
    try:
        rec = await fed.run_campaign(cfg, timeout=60)
        r = rec.rounds[0]
        assert r["failed"] == {"factory_c": "deadline"}
        assert sorted(r["participants"]) == ["factory_a", "factory_b"]
        import asyncio

        for _ in range(100):  # the late update arrives after the round closed: rejected as stale
            stale = fed.registry.get_sample_value(
                "pdmfed_messages_rejected_total", {"service": "security", "reason": "stale_round"}
            )
            if stale:
                break
            await asyncio.sleep(0.1)
        assert stale == 1
    finally:
        await fed.stop()


async def test_when_a_round_completes__the_model_crosses_the_broker_once_in_round_completed(
    settings, tiny_partitions
):
    data, parts = tiny_partitions
    fed = _fed(settings, LocalDatasites(parts))
    await fed.start()
    sizes: dict[str, list[int]] = {}
    route = fed._broker.route

    def tap(routing_key, body, headers):
        sizes.setdefault(routing_key, []).append(len(body))
        return route(routing_key, body, headers)

    fed._broker.route = tap
    try:
        rec = await fed.run_campaign(_cfg(data, list(parts)), timeout=60)
    finally:
        await fed.stop()
    assert rec.final_model  # the weights reached the orchestrator through round.completed
    model_bytes = sum(t.numel() * t.element_size() for t in rec.final_model.values())
    assert len(sizes["round.completed"]) == 2
    assert min(sizes["round.completed"]) > model_bytes
    # round.open carries the model to the connector and the aggregator once a round; nothing
    # else does (train.request names the version only)
    assert max(sizes["train.request"]) < 4096


def test_when_only_some_services_run_in_process__a_broker_is_required_and_names_are_checked(
    settings,
):
    with pytest.raises(ValueError, match="unknown service"):
        EmbeddedFederation(settings, services=("connector", "scheduler"))
    with pytest.raises(ValueError, match="needs a broker"):
        EmbeddedFederation(settings, services=("connector",))
    rabbit = settings.model_copy(update={"amqp_url": "amqp://guest:guest@127.0.0.1:5672/"})
    assert EmbeddedFederation(rabbit, services=("connector",)).services == ("connector",)


async def test_round_0_sums_the_factories_statistics_and_every_training_uses_them(
    settings, tiny_partitions
):
    import numpy as np
    from federation.datasite.job import feature_columns
    from federation.ml.fedstats import window_stats

    data, parts = tiny_partitions
    comm = LocalDatasites(parts)
    trained_with = []
    train = comm.request_training

    def spy(training_config, datasite_id):
        trained_with.append(training_config.get("normalizer"))
        return train(training_config, datasite_id)

    comm.request_training = spy
    comm.fail_next_stats["factory_b"] = 1  # its first statistics job fails: retried in round 0
    fed, rec = await _run(settings, comm, _cfg(data, list(parts), rounds=1))
    union = np.concatenate([X for X, _ in parts.values()])
    central = window_stats(union, feature_columns(union.shape[2])).normalizer().to_dict()
    assert rec.completed["reason"] == "max_rounds"
    assert rec.normalizer == central  # exactly the statistics of the union of the partitions
    assert sorted(comm.stats_calls) == sorted([*parts, "factory_b"])
    assert trained_with == [central] * len(parts)
    assert rec.initial_model is not None


async def test_when_one_factory_lies_in_round_0__its_statistics_are_left_out_of_the_normaliser(
    settings, tiny_partitions
):
    import numpy as np
    from federation.datasite.job import feature_columns
    from federation.ml.fedstats import window_stats

    data, parts = tiny_partitions
    comm = LocalDatasites(parts)
    comm.stats_lie["factory_c"] = lambda X: X + np.float32(1e6)  # every mean shifted by 1e6
    fed, rec = await _run(settings, comm, _cfg(data, list(parts), rounds=1))
    honest = np.concatenate([parts[ds][0] for ds in ("factory_a", "factory_b")])
    want = window_stats(honest, feature_columns(honest.shape[2])).normalizer().to_dict()
    assert rec.completed["reason"] == "max_rounds"
    assert rec.normalizer == want  # the two honest factories' exact statistics, nothing of c's
    assert max(abs(m) for m in rec.normalizer["mean"][0]) < 10  # a plain sum: ~3e5
    assert sorted(ds for ds, _ in comm.calls) == sorted(parts)  # c still trains (screened there)


async def test_when_too_few_factories_send_statistics__the_campaign_ends_in_round_0(
    settings, tiny_partitions
):
    data, parts = tiny_partitions
    comm = LocalDatasites(parts)
    for ds in ("factory_a", "factory_b"):
        comm.fail_next_stats[ds] = 10
    fed, rec = await _run(settings, comm, _cfg(data, list(parts), rounds=1, max_retries=1))
    assert rec.completed["reason"] == "no_quorum" and rec.completed["rounds"] == 0
    assert rec.rounds == [] and comm.calls == [] and rec.normalizer is None
