"""The aggregator composes each factory's DP-SGD spend with the campaign's record-level accountant."""

from __future__ import annotations

import pytest
from federation.campaign import CampaignConfig
from federation.privacy import RecordLevelLedger, noise_for_target

from services.aggregator.handlers import _record_privacy


class _Tx:  # the two store calls _record_privacy makes
    def __init__(self):
        self.kv = {}

    def get(self, key):
        return self.kv.get(key)

    def put(self, key, value):
        self.kv[key] = value


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_when_a_campaign_names_its_record_accountant__the_aggregator_ledger_uses_it(accountant):
    q, steps, rounds = 1 / 80, 80, 5
    z = noise_for_target(2.0, q, rounds * steps, 1e-5, accountant)  # ends at ε 2 with it
    cfg = CampaignConfig.model_validate(
        {
            "campaign_id": "c",
            "datasites": ["f"],
            "record_privacy": {
                "enabled": True,
                "noise_multiplier": z,
                "max_epsilon": 2.0,
                "accountant": accountant,
            },
        }
    )
    tx = _Tx()
    verdict = {"metrics": {"dp": {"noise_multiplier": z, "sample_rate": q, "steps": steps}}}
    for round_num in range(1, rounds + 1):
        out = _record_privacy(tx, cfg, {"f": verdict})
        assert out["record_budget_allows_next"] is (round_num < rounds), round_num
    ledger = RecordLevelLedger.from_dict(tx.kv["record-ledger/c"])
    assert ledger.method == accountant
    assert out["record_epsilon"]["f"] == pytest.approx(2.0, rel=1e-3)
