"""A service caps chunked updates at its campaigns' model size, again after a restart."""

from __future__ import annotations

import pytest
from federation.campaign import CampaignConfig, TrainingConfig
from federation.config import Settings
from federation.ml.limits import max_update_bytes
from federation.ml.models import build_model
from federation.runtime.launch import start_node
from federation.runtime.store import open_store
from federation.wire.codec import encode_payload
from federation.wire.messages import UpdateRaw


@pytest.mark.parametrize("kind", ["cnn", "lstm", "hybrid"])
def test_when_a_models_largest_update_is_encoded__it_fits_the_limit_and_the_limit_is_tight(kind):
    cfg = CampaignConfig(training=TrainingConfig(model_type=kind))
    model = build_model(kind, cfg.training.n_features, cfg.training.window).state_dict()
    update = UpdateRaw("c1", 3, "factory_a", 2, model, 100, {"loss": 1.0, "rmse": 2.0})
    encoded = len(encode_payload(update.to_payload()))
    limit = max_update_bytes(cfg)
    assert encoded < limit < 2 * encoded + 2 * 1024 * 1024


async def test_when_a_service_restarts__the_stored_campaigns_cap_updates_again(tmp_path):
    settings = Settings(demo=True, state_dir=tmp_path)
    cfg = CampaignConfig(campaign_id="c1", training=TrainingConfig(model_type="cnn"))
    store = open_store(settings, "trainer-dispatch")
    with store.transaction() as tx:  # dispatch keeps the config inside its campaign record
        tx.put("campaign/c1", {"config": cfg.to_payload(), "status": "running", "round": 1})
    store.close()
    node = await start_node("trainer-dispatch", settings)
    try:
        assert node.endpoint.sealer.assembler.max_update_bytes == max_update_bytes(cfg)
    finally:
        await node.stop()
