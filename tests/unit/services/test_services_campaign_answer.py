"""trainer-dispatch answers every campaign.start: campaign.accepted when it starts the campaign,
campaign.rejected (with a code and one line) for a campaign_id already taken or a config it
cannot run; the answers go through its outbox and echo the start's id. The other services forget
a refused campaign's settings, never a running one's."""

from __future__ import annotations

import os
from dataclasses import dataclass

from federation.campaign import CampaignConfig
from federation.runtime.service import ServiceRunner
from federation.runtime.store_sqlite import SqliteStore
from federation.wire.messages import CampaignRejected, CampaignStart, parse_payload

from services.campaign_refusal import forget_refused_campaign
from services.trainer_dispatch.handlers import build_service


@dataclass
class _Envelope:
    msg_id: bytes


class _Endpoint:
    """Records what the runner publishes from its outbox (unit tier: no bus)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict]] = []

    async def publish(self, msg_type, payload, **kw) -> None:
        self.published.append((str(msg_type), payload))

    def of(self, msg_type: str) -> list[dict]:
        return [p for t, p in self.published if t == msg_type]


def _config(cid: str = "c1", **overrides) -> dict:
    base = dict(
        campaign_id=cid,
        datasites=["f1", "f2", "f3"],
        rounds=4,
        quorum=2,
        seed=1,
        training={"model_type": "cnn", "epochs": 1, "n_features": 4, "window": 8},
        privacy={"enabled": False},
    )
    return CampaignConfig.model_validate({**base, **overrides}).to_payload()


def _dispatch() -> tuple[ServiceRunner, SqliteStore, _Endpoint]:
    store, endpoint = SqliteStore(), _Endpoint()
    return ServiceRunner(build_service(), endpoint, store), store, endpoint


async def _start(runner: ServiceRunner, cid: str, config: dict, start_id: str) -> None:
    msg = CampaignStart(cid, config, start_id)
    await runner._on_message("campaign.start", msg.to_payload(), _Envelope(os.urandom(16)))


async def test_a_started_campaign_is_accepted_before_its_round_0_asks_for_statistics():
    runner, store, endpoint = _dispatch()
    await _start(runner, "c1", _config(), "s-1")
    kinds = [t for t, _ in endpoint.published]
    assert kinds == ["campaign.accepted"] + ["stats.request"] * 3
    (accepted,) = endpoint.of("campaign.accepted")
    assert accepted == {
        "campaign_id": "c1",
        "rounds": 4,
        "datasites": ["f1", "f2", "f3"],
        "start_id": "s-1",
    }
    parse_payload("campaign.accepted", accepted)  # a valid typed message
    assert endpoint.of("campaign.rejected") == [] and store.pending_outbox_heads() == []


async def test_a_second_start_under_a_running_campaign_id_is_rejected_and_changes_nothing():
    runner, store, endpoint = _dispatch()
    await _start(runner, "c1", _config(), "s-1")
    with store.transaction() as tx:
        before = {k: tx.get(k) for k in tx.keys("")}
    endpoint.published.clear()
    await _start(runner, "c1", _config(rounds=9), "s-2")
    (rejected,) = [p for t, p in endpoint.published]  # the refusal, and nothing else
    assert rejected["code"] == CampaignRejected.DUPLICATE and rejected["start_id"] == "s-2"
    assert rejected["reason"] == (
        "a campaign with this campaign_id is already running (round 0): pass --resume to follow it, "
        "or choose a new campaign_id"
    )
    with store.transaction() as tx:
        after = {k: tx.get(k) for k in tx.keys("") if k in before}
    assert after.keys() == before.keys()
    assert after["campaign/c1"]["config"]["rounds"] == 4  # the running campaign kept its config


async def test_a_start_under_a_completed_campaign_id_is_rejected_without_suggesting_resume():
    runner, store, endpoint = _dispatch()
    await _start(runner, "c1", _config(), "s-1")
    with store.transaction() as tx:
        camp = tx.get("campaign/c1")
        tx.put("campaign/c1", {**camp, "status": "completed", "reason": "max_rounds"})
    await _start(runner, "c1", _config(), "s-2")
    (rejected,) = endpoint.of("campaign.rejected")
    assert rejected["reason"] == (
        "a campaign with this campaign_id already ran (completed: max_rounds): choose a new campaign_id"
    )


async def test_a_config_dispatch_cannot_run_is_rejected_with_the_reason_and_nothing_starts():
    runner, store, endpoint = _dispatch()
    await _start(runner, "c1", _config(datasites=["f1"], quorum=2), "s-1")
    await _start(runner, "c2", {**_config("c2"), "rounds": -3}, "s-2")
    await _start(runner, "c3", _config("other"), "s-3")
    refusals = {p["campaign_id"]: p for p in endpoint.of("campaign.rejected")}
    assert {p["code"] for p in refusals.values()} == {CampaignRejected.INVALID_CONFIG}
    assert refusals["c1"]["reason"] == "1 datasites < quorum 2"
    assert refusals["c2"]["reason"].startswith("invalid campaign config: rounds:")
    assert refusals["c3"]["reason"] == "campaign.start names campaign c3 but its config other"
    assert [p["start_id"] for p in refusals.values()] == ["s-1", "s-2", "s-3"]
    assert endpoint.of("campaign.accepted") == [] and endpoint.of("stats.request") == []
    assert endpoint.of("round.open") == []
    with store.transaction() as tx:
        assert tx.keys("campaign/") == [] and tx.keys("round/") == []
    # the refused id is free again: a corrected start is accepted
    await _start(runner, "c1", _config(), "s-4")
    assert [p["start_id"] for p in endpoint.of("campaign.accepted")] == ["s-4"]


def test_a_service_forgets_a_refused_campaign_but_not_the_running_one_a_duplicate_named():
    store = SqliteStore()
    with store.transaction() as tx:
        tx.put("campaign/bad", {"rounds": 1})
        tx.put("campaign/running", {"rounds": 4})
        assert forget_refused_campaign(
            tx, CampaignRejected("bad", CampaignRejected.INVALID_CONFIG, "x")
        )
        assert not forget_refused_campaign(
            tx, CampaignRejected("running", CampaignRejected.DUPLICATE, "already running")
        )
    assert store.read("campaign/bad") is None and store.read("campaign/running") == {"rounds": 4}


class _Sessions:
    """Fake session manager (unit tier): records every login."""

    def __init__(self) -> None:
        self.logins: list[str] = []

    def is_connected(self, datasite_id):
        return datasite_id in self.logins

    def connect_to_datasite(self, datasite_url, credentials):
        self.logins.append(credentials["datasite_id"])
        return True

    def datasite_answers(self, url):
        return True

    def check_connection(self, datasite_id):
        return True

    def disconnect_from_datasite(self, datasite_id):
        self.logins.remove(datasite_id)
        return True


async def test_the_connector_contacts_datasites_only_for_an_accepted_campaign_and_forgets_refused_ones(
    tmp_path,
):
    from federation.datasite_registry import DatasiteRegistry, write_registry
    from federation.wire.messages import CampaignAccepted, CampaignCompleted

    from services.connector.handlers import ConnectorLogic
    from services.connector.handlers import build_service as connector_service

    sites = {ds: (f"http://{ds}", "c@x.org", "pw") for ds in ("f1", "f2", "f3")}
    sessions = _Sessions()
    logic = ConnectorLogic(sessions, DatasiteRegistry.load(write_registry(tmp_path / "ds", sites)))
    store = SqliteStore()
    runner = ServiceRunner(connector_service(logic), _Endpoint(), store)

    async def deliver(msg) -> None:
        kind = msg.msg_type.value
        await runner._on_message(kind, msg.to_payload(), _Envelope(os.urandom(16)))

    await deliver(CampaignStart("c1", _config("c1"), "s-1"))
    assert logic.check_sessions() == {} and sessions.logins == []  # not before dispatch accepted
    await deliver(CampaignAccepted("c1", 4, ["f1", "f2", "f3"], "s-1"))
    assert logic.check_sessions() == {"c1": (3, 3)}

    # a duplicate start changes nothing and its refusal leaves the running campaign alone
    await deliver(CampaignStart("c1", _config("c1", datasites=["f1", "f2"]), "s-2"))
    await deliver(CampaignRejected("c1", CampaignRejected.DUPLICATE, "already running", "s-2"))
    assert store.read("campaign/c1")["datasites"] == ["f1", "f2", "f3"]
    assert logic.check_sessions() == {"c1": (3, 3)}

    # a refused campaign is forgotten: never contacted, its config gone
    await deliver(CampaignStart("c2", _config("c2"), "s-3"))
    await deliver(
        CampaignRejected("c2", CampaignRejected.INVALID_CONFIG, "1 datasites < quorum 2", "s-3")
    )
    assert store.read("campaign/c2") is None and set(logic.check_sessions()) == {"c1"}

    # a duplicate start of a finished campaign leaves no config behind (a restart would reopen it)
    await deliver(CampaignCompleted("c1", 4, "max_rounds"))
    await deliver(CampaignStart("c1", _config("c1"), "s-4"))
    await deliver(CampaignRejected("c1", CampaignRejected.DUPLICATE, "already ran", "s-4"))
    assert store.read("campaign/c1") is None and logic.check_sessions() == {}
