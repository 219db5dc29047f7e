"""A campaign.start cannot send the connector, or its secrets, anywhere its own registry does not name.

The attacker holds a key that may seal campaign.start (the orchestrator's, or a compromised
service's) and runs a fake datasite on the network. The services are the real ones on the
in-memory bus; the connector's PySyft session manager is the real one.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from attacker_listener import AttackerListener
from federation.config import Settings
from federation.datasite_registry import DatasiteRegistry, write_registry
from federation.orchestrator.embedded import EmbeddedFederation
from federation.runtime.launch import connector_session_manager

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRET_VAR = "PDMFED_ENCRYPTION_KEY"


@pytest.fixture
def listener():
    fake = AttackerListener().start()
    yield fake
    fake.stop()


@pytest.fixture
def secret(monkeypatch) -> str:
    value = secrets.token_urlsafe(32)
    monkeypatch.setenv(SECRET_VAR, value)
    return value


def _registry(tmp_path, sites: dict[str, str]) -> DatasiteRegistry:
    """The connector's own registry: these ids at these URLs, each with its own password."""
    return DatasiteRegistry.load(
        write_registry(
            tmp_path / "connector" / "datasites",
            {
                ds: (url, "connector@pdm-factory.com", secrets.token_urlsafe(24))
                for ds, url in sites.items()
            },
        )
    )


async def _federation(tmp_path, registry: DatasiteRegistry) -> EmbeddedFederation:
    settings = Settings(demo=True, state_dir=tmp_path / "state", amqp_url=None, redis_url=None)
    fed = EmbeddedFederation(
        settings,
        comm_manager=connector_session_manager(connect_timeout_s=20),
        datasite_registry=registry,
    )
    await fed.start()
    return fed


def _rejected(fed: EmbeddedFederation, service: str) -> float:
    total = 0.0
    for family in fed.registry.collect():
        for sample in family.samples:
            if (
                sample.name == "pdmfed_messages_rejected_total"
                and sample.labels.get("service") == service
            ):
                total += sample.value
    return total


async def _until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return predicate()


def _answered_rejected(fed: EmbeddedFederation) -> float:
    """How many campaign.rejected trainer-dispatch published (its answer to a refused config)."""
    total = 0.0
    for family in fed.registry.collect():
        for sample in family.samples:
            if (
                sample.name == "pdmfed_messages_published_total"
                and sample.labels.get("service") == "trainer-dispatch"
                and sample.labels.get("msg_type") == "campaign.rejected"
            ):
                total += sample.value
    return total


def _attack_config(url: str) -> dict:
    return {
        "campaign_id": "exfiltrate",
        "datasites": [
            {
                "datasite_id": "attacker-site",
                "url": url,
                "email": "x@attacker.example",
                "password_env": SECRET_VAR,
            }
        ],
        "rounds": 1,
        "quorum": 1,
        "round_timeout_s": 60,
        "robustness": {"enabled": False, "min_clients": 1},
    }


async def test_when_campaign_start_names_a_url_and_a_secret_variable__the_connector_never_sends_the_secret(
    tmp_path, listener, secret
):
    fed = await _federation(tmp_path, _registry(tmp_path, {"factory-1": "http://127.0.0.1:9"}))
    try:
        assert fed.client is not None
        await fed.client.endpoint.publish(
            "campaign.start", {"campaign_id": "exfiltrate", "config": _attack_config(listener.url)}
        )
        # Either the connector logs in at the attacker's URL, or it refuses the message as
        # malformed and trainer-dispatch answers campaign.rejected (an invalid config).
        await _until(
            lambda: (
                listener.got_login.is_set()
                or (_rejected(fed, "connector") >= 1 and _answered_rejected(fed) >= 1)
            ),
            120,
        )
        await asyncio.sleep(1.0)  # anything still in flight
        refused = _rejected(fed, "connector"), _answered_rejected(fed)
    finally:
        await fed.stop()
    assert not listener.received(secret), (
        "the connector sent PDMFED_ENCRYPTION_KEY to the attacker's URL"
    )
    assert not listener.requests, (
        f"the connector contacted a URL named in a message: {listener.requests}"
    )
    assert refused == (1, 1), (
        f"a campaign.start naming URLs and secrets must be refused (connector: malformed, "
        f"trainer-dispatch: campaign.rejected invalid_config): {refused}"
    )


async def test_when_a_campaign_names_a_datasite_outside_the_registry__it_is_refused_with_a_reason(
    tmp_path, listener, secret
):
    fed = await _federation(tmp_path, _registry(tmp_path, {"factory-1": "http://127.0.0.1:9"}))
    cid = "unknown-site"
    try:
        assert fed.client is not None
        # The attacker's id is plausible; where it lives is what it cannot say.
        await fed.client.endpoint.publish(
            "campaign.start",
            {
                "campaign_id": cid,
                "config": {
                    "campaign_id": cid,
                    "datasites": ["attacker-site"],
                    "rounds": 1,
                    "quorum": 1,
                    "round_timeout_s": 60,
                    "max_retries": 0,
                    "robustness": {"enabled": False, "min_clients": 1},
                },
            },
        )
        statuses = fed.client._record(cid).statuses
        assert await _until(lambda: any(s["status"] == "failed" for s in statuses), 60), statuses
        refusals = fed.registry.get_sample_value(
            "pdmfed_datasite_refusals_total", {"service": "connector", "reason": "unknown_datasite"}
        )
    finally:
        await fed.stop()
    failed = [s for s in statuses if s["status"] == "failed"]
    assert failed[0]["datasite_id"] == "attacker-site"
    assert "not in the connector's registry" in failed[0]["error"], failed
    assert refusals is not None and refusals >= 2  # at campaign.start and at the train.request
    assert not listener.requests and not listener.received(secret)
