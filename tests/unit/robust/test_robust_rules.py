"""Rules configured with their parameters, and one defence pipeline behind every caller."""

from __future__ import annotations

import pytest
import torch
from federation.campaign import CampaignConfig
from federation.errors import ConfigError, RobustnessError
from federation.robust import (
    Defence,
    MultiKrum,
    ReputationBook,
    TrimmedMean,
    aggregation_rule,
    build_rule,
    rule_spec,
)
from federation.robust.attacks import scaling
from federation.robust.pipeline import screening_policy


def test_when_a_rule_is_configured_with_parameters__it_is_built_with_them():
    rule = build_rule({"name": "multi_krum", "f": 2, "m": 5})
    assert isinstance(rule, MultiKrum) and (rule.f, rule.m) == (2, 5)
    assert build_rule("multi_krum").m == 3 and build_rule({"name": "krum", "f": 3}).f == 3
    assert rule_spec(build_rule({"name": "trimmed_mean", "trim_ratio": 0.3})) == {
        "name": "trimmed_mean",
        "trim_ratio": 0.3,
        "min_clients": 5,
    }


def test_when_a_rule_gets_an_unknown_parameter_or_name__the_error_names_what_is_accepted():
    with pytest.raises(RobustnessError, match=r"no parameter g; it accepts \['f', 'm'\]"):
        build_rule({"name": "krum", "g": 2})
    with pytest.raises(RobustnessError, match="unknown aggregation rule 'mean'"):
        build_rule("mean")
    with pytest.raises(RobustnessError, match="int m >= 1"):
        build_rule({"name": "multi_krum", "m": 0})


def test_when_a_campaign_names_its_rule__the_config_carries_name_and_parameters():
    cfg = CampaignConfig.model_validate(
        {"robustness": {"rule": {"name": "multi_krum", "f": 2, "m": 5}}}
    )
    assert cfg.robustness.rule == {"name": "multi_krum", "f": 2, "m": 5}
    rule = aggregation_rule(cfg.robustness)
    assert isinstance(rule, MultiKrum) and (rule.f, rule.m) == (2, 5)
    legacy = CampaignConfig.model_validate(
        {"robustness": {"aggregation": "trimmed_mean", "trim_ratio": 0.2}}
    )
    assert isinstance(aggregation_rule(legacy.robustness), TrimmedMean)
    assert legacy.robustness.rule["trim_ratio"] == 0.2
    with pytest.raises(ConfigError, match="no parameter"):
        CampaignConfig.from_payload({"robustness": {"rule": {"name": "median", "f": 1}}})
    assert CampaignConfig.from_payload(cfg.to_payload()) == cfg  # survives the wire


def _round(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ups = [{"w": torch.randn(50, generator=gen) * 0.1 + 1.0} for _ in range(n)]
    ups[0] = scaling(ups[0], 25.0)
    return ups, [f"f{i}" for i in range(n)], [100 + i for i in range(n)]


def test_when_the_secure_manager_screens_and_aggregates__it_matches_the_pipeline(monkeypatch):
    from federation.communication.secure_syft_client import SecurePySyftCommunicationManager

    monkeypatch.setenv("PDMFED_KEY_SALT", "unit-salt-for-rules")
    mgr = SecurePySyftCommunicationManager(
        "a passphrase long enough",
        enable_dp=False,
        aggregation={"name": "trimmed_mean", "trim_ratio": 0.2},
    )
    ups, ids, samples = _round()
    agg, flagged = mgr.secure_aggregation_with_bft(
        [
            {"datasite_id": c, "model_update": u, "num_samples": s}
            for c, u, s in zip(ids, ups, samples, strict=True)
        ]
    )
    cfg = CampaignConfig.model_validate(
        {"robustness": {"rule": {"name": "trimmed_mean", "trim_ratio": 0.2}}}
    )
    out = Defence(screening_policy(cfg.robustness), aggregation_rule(cfg.robustness)).run(
        ups, ids, ReputationBook(), num_samples=samples
    )
    assert flagged == out.flagged_ids
    torch.testing.assert_close(agg["w"], out.aggregate["w"])


def test_when_a_cohort_is_too_small_to_judge__nothing_is_accepted_and_no_reputation_is_earned():
    from federation.robust import ScreeningPolicy, screen_cohort

    book = ReputationBook()
    book.record("f0", True)  # once flagged: 0.5
    ups, ids, samples = _round(n=2)
    s = screen_cohort(ups, ids, ScreeningPolicy(min_clients=3), book, num_samples=samples)
    assert s.accepted == [] and s.unscreened_ids == ids
    assert s.rejected["f1"]["why"] == ["2 updates to judge; screening needs min_clients 3"]
    assert book.score("f0") == 0.5 and book.score("f1") == 1.0 and book.updates == 1
    nan = [{"w": torch.full((50,), float("nan"))}, ups[1]]
    s = screen_cohort(nan, ids, ScreeningPolicy(min_clients=3), book)
    assert s.flagged_ids == ["f0"] and s.unscreened_ids == ["f1"]
    assert book.score("f0") == 0.25  # a non-finite update is flagged at any cohort size
    with pytest.raises(RobustnessError, match="no update survived screening"):
        Defence(ScreeningPolicy(min_clients=3), TrimmedMean()).run(ups, ids, book)
