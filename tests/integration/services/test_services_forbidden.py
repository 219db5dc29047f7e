"""The two reproduced attacks, on real services over RabbitMQ: a connector key forges what only
the aggregator or the security service may send; both are refused as forbidden, unhandled."""

from __future__ import annotations

import asyncio
import secrets
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from federation.bus.base import Delivery, dead_letter_info
from federation.campaign import CampaignConfig
from federation.config import Settings
from federation.datasite.job import feature_columns
from federation.ml.fedstats import window_stats
from federation.runtime.launch import ensure_identities, make_bus, make_sealer, start_node
from federation.wire.contracts import ENVELOPE_ROLES
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parents[1] / "bus"))
from bus_helpers import AMQP_URL, RABBIT_UP, wait_for  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not RABBIT_UP, reason="RabbitMQ not reachable on 127.0.0.1:5672"),
]

CID = "attacked"


def _settings(root: Path, prefix: str, service: str) -> Settings:
    return Settings(
        amqp_url=AMQP_URL,
        topology_prefix=prefix,
        keys_dir=root / "keys",
        state_dir=root / service,
        encryption_key=root.joinpath("passphrase").read_text(),
        key_salt="b6c1e0a4d3f29875",
        redis_url=None,
        # each sender id's one role, as `pdmfed keys init` writes it for a deployment
        sender_roles=",".join(f"{r}={r}" for r in ENVELOPE_ROLES),
    )


def _campaign() -> CampaignConfig:
    return CampaignConfig.model_validate(
        dict(
            campaign_id=CID,
            datasites=["f1", "f2"],
            rounds=3,
            round_timeout_s=600,
            quorum=2,
            max_retries=0,
            seed=1,
            training={"model_type": "cnn", "epochs": 1, "n_features": 4, "window": 8},
            privacy={"enabled": False},
            robustness={"enabled": False, "aggregation": "fedavg", "min_clients": 1},
        )
    )


class Federation:
    """trainer-dispatch and aggregator as services, a campaign in round 1, and a dead-letter view."""

    async def start(self, root: Path) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        root.joinpath("passphrase").write_text(secrets.token_urlsafe(24))
        ensure_identities(root / "keys", [str(r) for r in ENVELOPE_ROLES])
        self.root = root
        self.registries = {n: CollectorRegistry() for n in ("trainer-dispatch", "aggregator")}
        self.nodes = {}
        for name, registry in self.registries.items():
            self.nodes[name] = await start_node(
                name,
                _settings(root, self.prefix, name),
                registry=registry,
                store_path=root / f"{name}.sqlite",
            )
        self.bus = make_bus(_settings(root, self.prefix, "attacker"), "attacker")
        await self.bus.start()
        self.dead: list[Delivery] = []

        async def on_dead(d: Delivery) -> None:
            self.dead.append(d)

        await self.bus.consume(f"{self.prefix}.dead", on_dead)
        await self.publish(
            "orchestrator",
            "campaign.start",
            {"campaign_id": CID, "config": _campaign().to_payload()},
        )
        # round 0: security's verified statistics of both datasites let dispatch open round 1
        await wait_for(lambda: self.get("trainer-dispatch", f"round/{CID}/000000") is not None, 30)
        for i, ds in enumerate(("f1", "f2")):
            windows = np.arange(2 * 8 * 4, dtype=np.float32).reshape(2, 8, 4) + i
            stats = window_stats(windows, feature_columns(4)).to_dict()
            await self.publish("security", "stats.screened",
                               {"campaign_id": CID, "round_num": 0, "datasite_id": ds, "stats": stats,
                                "attempt": 1})  # fmt: skip
        await wait_for(lambda: self.get("aggregator", f"round/{CID}/000001") is not None, 30)
        await wait_for(lambda: self.get("trainer-dispatch", f"round/{CID}/000001") is not None, 30)

    async def publish(self, sender: str, msg_type: str, payload: dict) -> None:
        for body in make_sealer(_settings(self.root, self.prefix, sender), sender).seal(
            msg_type, payload
        ):
            await self.bus.publish(msg_type, body)

    def get(self, service: str, key: str):
        with self.nodes[service].store.transaction() as tx:
            return tx.get(key)

    def value(self, service: str, name: str, **labels) -> float:
        return (
            self.registries[service].get_sample_value(name, {"service": service, **labels}) or 0.0
        )

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.stop()
        await self.bus.delete_topology()
        await self.bus.close()


@pytest.fixture
async def federation(tmp_path):
    fed = Federation()
    await fed.start(tmp_path)
    try:
        yield fed
    finally:
        await fed.stop()


def _forged_model(fed: Federation) -> dict[str, torch.Tensor]:
    model = fed.get("trainer-dispatch", f"model/{CID}")["global_model"]
    return {k: torch.full_like(v, 66.0) if v.is_floating_point() else v for k, v in model.items()}


async def test_when_the_connector_seals_round_completed__dispatch_refuses_it_and_keeps_its_model(
    federation,
):
    fed = federation
    forged = {
        "campaign_id": CID,
        "round_num": 1,
        "model_version": 777,
        "global_model": _forged_model(fed),
    }
    await fed.publish("connector", "round.completed", forged)
    await wait_for(
        lambda: (
            fed.value("trainer-dispatch", "pdmfed_messages_rejected_total", reason="forbidden") == 1
        )
    )
    await wait_for(lambda: any(dead_letter_info(d).reason == "forbidden" for d in fed.dead))
    assert fed.get("trainer-dispatch", f"model/{CID}")["version"] == 0
    assert fed.get("trainer-dispatch", f"round/{CID}/000001")["status"] == "open"
    assert fed.get("trainer-dispatch", f"round/{CID}/000002") is None
    assert (
        fed.value("trainer-dispatch", "pdmfed_messages_consumed_total", msg_type="round.completed")
        == 0
    )
    (dead,) = [d for d in fed.dead if dead_letter_info(d).reason == "forbidden"]
    assert dead_letter_info(dead).routing_key == "round.completed"

    # the same message from the aggregator is the real thing: adopted, round 2 opens from it
    await fed.publish("aggregator", "round.completed", forged)
    await wait_for(lambda: fed.get("trainer-dispatch", f"round/{CID}/000002") is not None)
    assert fed.get("trainer-dispatch", f"model/{CID}")["version"] == 777


async def test_when_the_connector_seals_update_screened__the_aggregator_refuses_it_unscreened(
    federation,
):
    fed = federation
    delta = {k: torch.zeros_like(v) for k, v in _forged_model(fed).items()}
    forged = {
        "campaign_id": CID,
        "round_num": 1,
        "datasite_id": "f1",
        "model_version": 0,
        "delta": delta,
        "num_samples": 10,
    }
    await fed.publish("connector", "update.screened", forged)
    await wait_for(
        lambda: fed.value("aggregator", "pdmfed_messages_rejected_total", reason="forbidden") == 1
    )
    await wait_for(lambda: any(dead_letter_info(d).reason == "forbidden" for d in fed.dead))
    assert fed.get("aggregator", f"verdict/{CID}/000001/f1") is None
    assert (
        fed.value("aggregator", "pdmfed_messages_consumed_total", msg_type="update.screened") == 0
    )

    # sealed by the security service it is a verdict the aggregator keeps
    await fed.publish("security", "update.screened", forged)
    await wait_for(lambda: fed.get("aggregator", f"verdict/{CID}/000001/f1") is not None)
    await asyncio.sleep(0)
