"""trainer-dispatch starts an own model's campaign from its entry point, and refuses one DP-SGD
cannot train (campaign.rejected with the reason) before any round opens."""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from federation.campaign import CampaignConfig
from federation.runtime.service import ServiceRunner
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.messages import CampaignRejected, CampaignStart

from services.trainer_dispatch.handlers import build_service

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tcn_rul"


@dataclass
class _Envelope:
    msg_id: bytes


class _Endpoint:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict]] = []

    async def publish(self, msg_type, payload, **kw) -> None:
        self.published.append((str(msg_type), payload))

    def of(self, msg_type: str) -> list[dict]:
        return [p for t, p in self.published if t == msg_type]


def _config(model_type: str) -> dict:
    return CampaignConfig.model_validate(
        dict(
            campaign_id="own",
            datasites=["f1", "f2", "f3"],
            quorum=2,
            training={"model_type": model_type, "n_features": 4, "window": 8},
            privacy={"enabled": False},
            record_privacy={"enabled": True},
        )
    ).to_payload()


async def _start(config: dict) -> tuple[_Endpoint, SqliteStore]:
    store, endpoint = SqliteStore(), _Endpoint()
    runner = ServiceRunner(build_service(), endpoint, store)
    msg = CampaignStart("own", config, "s-1")
    await runner._on_message("campaign.start", msg.to_payload(), _Envelope(os.urandom(16)))
    return endpoint, store


async def test_an_own_models_campaign_is_accepted_and_its_round_0_asks_for_statistics(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    endpoint, _ = await _start(_config("tcn_rul.model:build"))
    assert [t for t, _ in endpoint.published][:2] == ["campaign.accepted", "stats.request"]


async def test_a_model_dp_sgd_cannot_train_is_rejected_before_any_round(tmp_path, monkeypatch):
    pkg = tmp_path / "bn_dispatch_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def build(n_features, window):
            return nn.Sequential(nn.Flatten(), nn.Linear(n_features * window, 8),
                                 nn.BatchNorm1d(8), nn.Linear(8, 1), nn.Flatten(0))
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("bn_dispatch_pkg", None)
    endpoint, store = await _start(_config("bn_dispatch_pkg.model:build"))
    (refusal,) = endpoint.of("campaign.rejected")
    assert refusal["code"] == CampaignRejected.INVALID_CONFIG
    assert refusal["reason"].startswith(
        "campaign refused: model 'bn_dispatch_pkg.model:build' cannot train under record-level "
        "DP-SGD: BatchNorm1d at '2' normalises each sample with its batch's statistics"
    )
    assert endpoint.of("round.open") == [] and endpoint.of("campaign.accepted") == []
    with store.transaction() as tx:
        assert tx.keys("campaign/") == []
