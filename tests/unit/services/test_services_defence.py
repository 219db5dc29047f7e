"""The security and aggregator services run the one defence pipeline, driven through their own handlers."""

from __future__ import annotations

import math

import pytest
import torch
from federation.campaign import CampaignConfig
from federation.privacy import PrivacyAccountant
from federation.robust import Defence, ReputationBook, aggregation_rule
from federation.robust.attacks import scaling
from federation.robust.pipeline import screening_policy
from federation.runtime.service import CheckedTransaction
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.messages import parse_payload

from services.aggregator.handlers import build_service as build_aggregator
from services.security.handlers import build_service as build_security

CID = "defence"
NOISE_D = 40_000  # coordinates on which the noise's std is measured


def _cfg(**kw) -> CampaignConfig:
    return CampaignConfig.model_validate({"campaign_id": CID, **kw})


class _Driven:
    """One service on an in-memory store, its handlers called as the runner calls them."""

    def __init__(self, service) -> None:
        self.service, self.store = service, SqliteStore()

    def handle(self, kind: str, payload: dict) -> None:
        with self.store.transaction() as tx:
            _, handler = self.service.handler_of(kind)
            handler(CheckedTransaction(tx, self.service.name), parse_payload(kind, payload), None)

    def take(self, kind: str) -> list[dict]:
        """The payloads of ``kind`` committed for publishing (and removed from the outbox)."""
        out = []
        for item in self.store.pending_outbox(1000):
            if item.msg_type == kind:
                out.append(item.payload)
                self.store.outbox_done(item.id)
        return out


def _open(svc: _Driven, cfg: CampaignConfig, base: dict, rnd: int = 1) -> None:
    svc.handle("campaign.start", {"campaign_id": CID, "config": cfg.to_payload()})
    svc.handle(
        "round.open",
        {"campaign_id": CID, "round_num": rnd, "model_version": rnd - 1, "global_model": base},
    )


def _screened(ds: str, delta: dict, rnd: int = 1, samples: int = 100) -> dict:
    return {
        "campaign_id": CID,
        "round_num": rnd,
        "datasite_id": ds,
        "model_version": rnd - 1,
        "delta": delta,
        "num_samples": samples,
        "weight": float(samples),
        "metrics": {},
        "verdict": {"accepted": True, "reputation": 1.0},
    }


@pytest.mark.parametrize("n, kept", [(5, 3), (7, 5), (9, 7), (12, 8)])
def test_when_the_aggregator_noises_a_trimmed_mean__the_std_is_z_times_clip_over_the_rows_kept(
    n, kept
):
    # ceil(0.1 n) rows trimmed from each end: the noise must be z C / (n - 2 ceil(0.1 n))
    z, clip = 0.8, 2.0
    cfg = _cfg(
        privacy={"enabled": True, "mode": "central", "noise_multiplier": z, "clip_norm": clip},
        robustness={"rule": {"name": "trimmed_mean", "trim_ratio": 0.1}},
        quorum=1,
    )
    agg = _Driven(build_aggregator())
    _open(agg, cfg, {"w": torch.zeros(NOISE_D)})
    ids = [f"f{i}" for i in range(n)]
    agg.handle("round.close", {"campaign_id": CID, "round_num": 1, "expected": ids, "failed": {}})
    for ds in ids:  # every update zero: what comes back is the noise alone
        agg.handle("update.screened", _screened(ds, {"w": torch.zeros(NOISE_D)}))
    (done,) = agg.take("round.completed")
    want = z * clip / kept
    assert done["status"] == "aggregated"
    assert done["metrics"]["noise_std"] == pytest.approx(want, rel=1e-9)
    measured = float(done["global_model"]["w"].double().std())
    assert measured == pytest.approx(want, rel=4 / math.sqrt(NOISE_D))


def _round(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ups = [{"w": torch.randn(50, generator=gen) * 0.1 + 1.0} for _ in range(n)]
    ups[0] = scaling(ups[0], 25.0)
    return ups, [f"f{i}" for i in range(n)], [100 + i for i in range(n)]


def test_when_security_and_aggregator_defend_one_round__they_run_the_pipelines_functions():
    cfg = _cfg(
        privacy={"enabled": False},
        robustness={"rule": {"name": "trimmed_mean", "trim_ratio": 0.2}},
    )
    ups, ids, samples = _round()
    base = {"w": torch.zeros(50)}
    sec, agg = _Driven(build_security()), _Driven(build_aggregator())
    sec.handle("campaign.start", {"campaign_id": CID, "config": cfg.to_payload()})
    _open(agg, cfg, base)
    for ds, u, s in zip(ids, ups, samples, strict=True):
        sec.handle(
            "update.raw",
            {
                "campaign_id": CID,
                "round_num": 1,
                "datasite_id": ds,
                "model_version": 0,
                "delta": u,
                "num_samples": s,
                "metrics": {},
            },
        )
    close = {"campaign_id": CID, "round_num": 1, "expected": ids, "failed": {}}
    sec.handle("round.close", close)
    agg.handle("round.close", close)
    screened, rejected = sec.take("update.screened"), sec.take("update.rejected")
    for p in screened:
        agg.handle("update.screened", p)
    for p in rejected:
        agg.handle("update.rejected", p)
    (done,) = agg.take("round.completed")

    out = Defence(screening_policy(cfg.robustness), aggregation_rule(cfg.robustness)).run(
        ups, ids, ReputationBook(), num_samples=samples
    )
    assert [p["datasite_id"] for p in rejected] == out.flagged_ids == ["f0"]
    assert sorted(done["participants"]) == out.kept_ids
    assert [p["weight"] for p in screened] == pytest.approx(out.screening.weights)
    torch.testing.assert_close(done["global_model"]["w"], out.aggregate["w"])


def test_when_privacy_is_local__security_noises_each_accepted_update_and_the_aggregator_spends_it():
    z, clip, n = 0.5, 1.5, 3
    cfg = _cfg(
        privacy={"enabled": True, "mode": "local", "noise_multiplier": z, "clip_norm": clip},
        robustness={"enabled": False},
    )
    ids = [f"f{i}" for i in range(n)]
    sec, agg = _Driven(build_security()), _Driven(build_aggregator())
    sec.handle("campaign.start", {"campaign_id": CID, "config": cfg.to_payload()})
    _open(agg, cfg, {"w": torch.zeros(NOISE_D)})
    for ds in ids:  # far above the clip norm, in one coordinate
        delta = {"w": torch.zeros(NOISE_D)}
        delta["w"][0] = 100.0
        sec.handle(
            "update.raw",
            {
                "campaign_id": CID,
                "round_num": 1,
                "datasite_id": ds,
                "model_version": 0,
                "delta": delta,
                "num_samples": 10,
                "metrics": {},
            },
        )
    close = {"campaign_id": CID, "round_num": 1, "expected": ids, "failed": {}}
    sec.handle("round.close", close)
    agg.handle("round.close", close)
    screened = sec.take("update.screened")
    assert len(screened) == n
    for p in screened:
        w = p["delta"]["w"].double()
        assert float(w[0]) == pytest.approx(clip, abs=6 * z * clip)  # clipped, then noised
        assert float(w[1:].std()) == pytest.approx(z * clip, rel=4 / math.sqrt(NOISE_D))
        assert p["verdict"]["local_noise"] is True
        agg.handle("update.screened", p)
    (done,) = agg.take("round.completed")
    assert done["status"] == "aggregated"
    assert done["epsilon"] == pytest.approx(
        PrivacyAccountant(z, 1.0, cfg.privacy.delta).epsilon_after(1)
    )


def test_when_central_dp_is_asked_of_a_rule_without_a_sound_bound__the_campaign_is_refused_up_front():
    from federation.errors import ConfigError

    with pytest.raises(ConfigError, match="central DP: centered_clipping with an adaptive tau"):
        CampaignConfig.from_payload({"robustness": {"rule": {"name": "centered_clipping"}}})
    ok = {"rule": {"name": "centered_clipping", "tau": 0.5}}
    assert CampaignConfig.from_payload({"robustness": ok}).robustness.rule["tau"] == 0.5
    local = {"privacy": {"mode": "local"}, "robustness": {"rule": {"name": "centered_clipping"}}}
    assert CampaignConfig.from_payload(local).privacy.mode == "local"


def _stats_raw(ds: str, stats: dict) -> dict:
    return {"campaign_id": CID, "round_num": 0, "datasite_id": ds, "stats": stats,
            "stats_signature": None, "factory_key_id": ds}  # fmt: skip


def test_when_a_factory_sends_statistics_no_partition_can_have__security_refuses_them_to_dispatch():
    import numpy as np
    from federation.ml.fedstats import SensorStats

    sec = _Driven(build_security())
    sec.handle("campaign.start", {"campaign_id": CID, "config": _cfg().to_payload()})
    honest = SensorStats.of_rows(np.arange(12, dtype=np.float32).reshape(6, 2), ("x1", "x2"))
    sec.handle("stats.raw", _stats_raw("f1", honest.to_dict()))
    (passed,) = sec.take("stats.screened")
    assert passed["stats"] == honest.to_dict() and sec.take("stats.rejected") == []
    lie = honest.to_dict()
    lie["regimes"][0]["sum"][0] = str(10**60)  # a mean of ~1e15 with the sum of squares of ~30
    negative = {**honest.to_dict(), "regimes": [{**lie["regimes"][0], "count": -6}]}
    for ds, bad in (("f2", lie), ("f3", negative)):
        sec.handle("stats.raw", {**_stats_raw(ds, bad), "attempt": 2})
    refused = sec.take("stats.rejected")
    assert [(r["datasite_id"], r["reason"], r["attempt"]) for r in refused] == [
        ("f2", "invalid_stats", 2), ("f3", "invalid_stats", 2)]  # fmt: skip
    assert all(r["why"] for r in refused) and sec.take("stats.screened") == []


def test_when_statistics_fail_their_factory_signature__security_refuses_them_to_dispatch():
    import numpy as np
    from federation.errors import AuthError
    from federation.ml.fedstats import SensorStats

    def verify(payload: dict) -> None:
        if payload["datasite_id"] != "f1":
            raise AuthError("signature does not verify")

    sec = _Driven(build_security(verify_factory=verify, verify_stats=verify))
    sec.handle("campaign.start", {"campaign_id": CID, "config": _cfg().to_payload()})
    stats = SensorStats.of_rows(
        np.arange(12, dtype=np.float32).reshape(6, 2), ("x1", "x2")
    ).to_dict()
    for ds in ("f1", "f2"):
        sec.handle("stats.raw", _stats_raw(ds, stats))
    assert [p["datasite_id"] for p in sec.take("stats.screened")] == ["f1"]
    (refused,) = sec.take("stats.rejected")
    assert (refused["datasite_id"], refused["reason"]) == ("f2", "auth")
    assert "does not verify" in refused["why"]
