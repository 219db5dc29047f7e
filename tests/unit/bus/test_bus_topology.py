"""Topology: topic matching, the binding table, queue arguments and the definitions export."""

from __future__ import annotations

import pytest
from federation.bus.topology import (
    BINDINGS,
    DEAD_QUEUE,
    DEFAULT_TOPOLOGY,
    DLX,
    EXCHANGE,
    SERVICE_QUEUES,
    Topology,
    as_definitions,
    topic_matches,
)
from federation.wire.messages import MsgType

#: Every routing key: the wire module's message types.
MESSAGE_TYPES = tuple(t.value for t in MsgType)


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("update.raw", "update.raw", True),
        ("update.raw", "update.screened", False),
        ("update.*", "update.raw", True),
        ("update.*", "update.raw.extra", False),
        ("*.raw", "update.raw", True),
        ("#", "update.raw", True),
        ("#", "", True),
        ("update.#", "update", True),
        ("update.#", "update.a.b", True),
        ("#.raw", "a.b.raw", True),
        ("#.raw", "a.b.rawx", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("*", "a.b", False),
    ],
)
def test_when_matching_topics__star_is_one_word_and_hash_is_any_number(pattern, key, expected):
    assert topic_matches(pattern, key) is expected


def test_when_any_message_type_is_published__at_least_one_service_queue_receives_it():
    for msg_type in MESSAGE_TYPES:
        bound = [q.name for q in SERVICE_QUEUES.values() if msg_type in q.bindings]
        assert bound, f"{msg_type} would be unroutable"
    assert set(BINDINGS) == set(MESSAGE_TYPES)


def test_when_reading_the_binding_table__every_binding_says_why():
    for subs in BINDINGS.values():
        for service, why in subs:
            assert service in SERVICE_QUEUES and len(why) > 10


def test_when_declaring_a_service_queue__it_is_quorum_with_limit_ttl_and_dlx():
    args = SERVICE_QUEUES["security"].arguments()
    assert args == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-message-ttl": 600_000,
        "x-dead-letter-exchange": "pdmfed.dlx",
        "x-dead-letter-routing-key": "dead.security",
    }
    assert (EXCHANGE, DLX, DEAD_QUEUE) == ("pdmfed", "pdmfed.dlx", "pdmfed.dead")
    assert SERVICE_QUEUES["trainer-dispatch"].name == "pdmfed.trainer-dispatch"


def test_when_prefixed__every_name_moves_with_the_prefix():
    topo = Topology(prefix="abc", delivery_limit=1, message_ttl_s=2.5)
    names = [q.name for q in topo.all_queues()] + [topo.exchange.name, topo.dlx.name]
    assert all(n.startswith("abc") for n in names)
    assert topo.queue("connector").arguments()["x-message-ttl"] == 2500
    assert topo.queue("connector").arguments()["x-dead-letter-exchange"] == "abc.dlx"
    with pytest.raises(KeyError):
        topo.queue("nobody")


def test_when_exported_as_definitions__exchanges_queues_bindings_and_policies_match():
    defs = as_definitions(DEFAULT_TOPOLOGY, vhost="pdm")
    assert {e["name"]: e["type"] for e in defs["exchanges"]} == {
        "pdmfed": "topic",
        "pdmfed.dlx": "topic",
    }
    queues = {q["name"]: q for q in defs["queues"]}
    assert set(queues) == {
        "pdmfed.connector",
        "pdmfed.trainer-dispatch",
        "pdmfed.security",
        "pdmfed.aggregator",
        "pdmfed.dead",
    }
    assert all(q["durable"] and q["vhost"] == "pdm" for q in queues.values())
    assert queues["pdmfed.aggregator"]["arguments"] == SERVICE_QUEUES["aggregator"].arguments()
    pairs = {(b["source"], b["destination"], b["routing_key"]) for b in defs["bindings"]}
    assert ("pdmfed", "pdmfed.security", "update.raw") in pairs
    assert ("pdmfed.dlx", "pdmfed.dead", "#") in pairs
    assert len(pairs) == sum(len(s) for s in BINDINGS.values()) + 1
    (policy,) = defs["policies"]
    assert policy["pattern"] == r"^pdmfed\.dead$" and policy["apply-to"] == "queues"
