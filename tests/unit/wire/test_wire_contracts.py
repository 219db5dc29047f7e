"""The contract registry: complete, consistent with the handlers and the docs, and the source of
bindings, trust and publish permissions."""

from __future__ import annotations

from pathlib import Path

import pytest
from federation.bus.topology import BINDINGS
from federation.errors import ConfigError, ForbiddenError
from federation.provision import trusted_senders
from federation.runtime.roles import SenderRoles, load_sender_roles, parse_sender_roles
from federation.wire.contracts import (
    CONTRACTS,
    ENVELOPE_ROLES,
    SERVICE_ROLES,
    Role,
    contracts_table,
    may_send,
    publish_keys,
)
from federation.wire.messages import MESSAGE_CLASSES, MsgType

DOC = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"


class _Env:
    def __init__(self, sender: str, msg_type: str) -> None:
        self.sender, self.msg_type = sender, msg_type


def test_every_message_type_has_one_contract_with_a_sender_and_a_service_consumer():
    assert set(CONTRACTS) == set(MsgType) == set(MESSAGE_CLASSES)
    for msg_type, c in CONTRACTS.items():
        assert c.payload is MESSAGE_CLASSES[msg_type]
        assert c.senders and c.senders <= set(ENVELOPE_ROLES)
        # a mandatory publish needs a durable queue: at least one service consumes each type
        assert set(c.consumer_roles) & set(SERVICE_ROLES), msg_type


def test_a_role_publishes_exactly_what_it_may_send():
    assert publish_keys(Role.CONNECTOR) == ("stats.raw", "update.raw", "datasite.status")
    assert publish_keys(Role.ORCHESTRATOR) == ("campaign.start",)
    assert publish_keys(Role.AGGREGATOR) == ("round.completed",)
    for role in ENVELOPE_ROLES:
        assert all(may_send(role, key) for key in publish_keys(role))
    assert publish_keys(Role.FACTORY) == ()
    assert not may_send("connector", "no.such.type") and not may_send("nobody", "update.raw")


def test_bindings_are_the_service_consumers_of_the_contracts():
    for msg_type, c in CONTRACTS.items():
        want = {r.value for r in c.consumer_roles if r in SERVICE_ROLES}
        assert {q for q, _ in BINDINGS[msg_type.value]} == want


def test_the_trust_each_component_gets_is_the_senders_of_what_it_consumes():
    # and of the bodies those may forward: security passes the connector's update on by reference
    assert trusted_senders("aggregator") == sorted(
        ["orchestrator", "trainer-dispatch", "security", "connector"]
    )
    assert trusted_senders("security") == sorted(["orchestrator", "trainer-dispatch", "connector"])
    # round 0: dispatch sums the statistics security verified
    assert trusted_senders("trainer-dispatch") == sorted(
        ["orchestrator", "aggregator", "connector", "security"]
    )


def test_the_architecture_document_holds_the_generated_contract_table():
    text = DOC.read_text()
    begin, end = "<!-- contracts-table:begin -->\n", "<!-- contracts-table:end -->"
    assert text[text.index(begin) + len(begin) : text.index(end)] == contracts_table()


def test_when_a_sender_role_may_not_send_a_type__authorize_refuses_it_as_forbidden():
    roles = SenderRoles({"connector-2": "connector", "aggregator": "aggregator"})
    roles.authorize(_Env("connector-2", "update.raw"))
    with pytest.raises(ForbiddenError) as err:
        roles.authorize(_Env("connector-2", "round.completed"))
    assert err.value.reason == "forbidden"
    with pytest.raises(ForbiddenError, match="no role"):
        roles.authorize(_Env("stranger", "round.completed"))


def test_sender_roles_are_explicit_configuration_or_the_service_refuses_to_start(tmp_path):
    with pytest.raises(ConfigError, match="no sender roles"):
        load_sender_roles(tmp_path, None)
    assert parse_sender_roles("connector-1=connector, connector-2=connector") == {
        "connector-1": "connector",
        "connector-2": "connector",
    }
    with pytest.raises(ConfigError, match="two roles"):
        parse_sender_roles("x=connector,x=security")
    with pytest.raises(ConfigError, match="roles are"):
        SenderRoles({"x": "factory"})
    with pytest.raises(ConfigError, match="have no role"):
        load_sender_roles(None, "connector=connector", trusted=["connector", "aggregator"])
    (tmp_path / "senders.json").write_text('{"senders": {"aggregator": "aggregator"}}')
    roles = load_sender_roles(tmp_path, "connector-1=connector", trusted=["aggregator"])
    assert dict(roles) == {"aggregator": Role.AGGREGATOR, "connector-1": Role.CONNECTOR}
