"""The shipped campaign example does what its comments say: every one of its rounds fits the budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from federation.campaign import load_campaign_config
from federation.privacy import RecordLevelLedger

from services.trainer_dispatch.handlers import privacy_allows_round

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "campaign.yaml"


@pytest.mark.parametrize("windows", [2000, 3500, 6000])
def test_when_the_example_campaign_runs__no_budget_stops_it_before_its_last_round(windows):
    cfg = load_campaign_config(EXAMPLE)
    assert cfg.rounds == 10
    # central (client-level) DP: dispatch's own check before opening each round
    assert all(privacy_allows_round(cfg, done) for done in range(cfg.rounds))
    # record-level DP-SGD: one epoch per round, sample rate 1/ceil(n/batch) (federation.ml.train)
    rp, batch = cfg.record_privacy, cfg.training.batch_size
    steps = math.ceil(windows / batch) * cfg.training.epochs
    ledger = RecordLevelLedger(delta=cfg.privacy.delta)
    for round_num in range(1, cfg.rounds + 1):
        assert not ledger.would_exceed(
            rp.max_epsilon, "f", rp.noise_multiplier, 1 / math.ceil(windows / batch), steps
        ), f"round {round_num} would exceed ε {rp.max_epsilon}"
        ledger.spend("f", rp.noise_multiplier, 1 / math.ceil(windows / batch), steps)
    assert ledger.epsilon("f") <= (4.3 if windows == 2000 else rp.max_epsilon)
