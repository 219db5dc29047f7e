"""The RabbitMQ topology in one place: exchange, dead-letter path, one quorum queue per service."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from federation.runtime.registry import SERVICE_NAMES

__all__ = [
    "ExchangeType",
    "QueueType",
    "ExchangeSpec",
    "QueueSpec",
    "Topology",
    "BINDINGS",
    "DEFAULT_DELIVERY_LIMIT",
    "DEFAULT_MESSAGE_TTL_S",
    "DEFAULT_TOPOLOGY",
    "EXCHANGE",
    "DLX",
    "DEAD_QUEUE",
    "SERVICE_QUEUES",
    "SERVICES",
    "topic_matches",
    "declare_topology",
    "delete_topology",
    "as_definitions",
]

#: A message is redelivered at most this many times after its first delivery.
DEFAULT_DELIVERY_LIMIT = 5
#: Queue message TTL; the replay window (TTL + clock skew) counts on messages not living longer.
DEFAULT_MESSAGE_TTL_S = 600.0
#: Cap on the dead-letter queue, applied as a policy so operators can change it live.
DEAD_QUEUE_MAX_LENGTH = 100_000
#: ... and on its bytes: every refused body is parked there, and an attacker chooses their size
#: (100,000 bodies of 8 MiB would be 800 GB on the broker).
DEAD_QUEUE_MAX_BYTES = 1024**3

#: The services (their roles): each has the queue ``<prefix>.<role>``.
SERVICES: tuple[str, ...] = SERVICE_NAMES


def _bindings() -> dict[str, tuple[tuple[str, str], ...]]:
    from federation.wire.contracts import CONTRACTS

    return {
        msg_type.value: tuple(
            (role.value, why) for role, why in c.consumers if role.value in SERVICES
        )
        for msg_type, c in CONTRACTS.items()
    }


#: routing key (message type) -> services whose queue receives it, and why (from the message
#: contracts). Every message type is bound to at least one durable queue, so a publish is
#: routable even when no CLI or monitor is listening (publishes are mandatory: unroutable raises).
BINDINGS: dict[str, tuple[tuple[str, str], ...]] = _bindings()


class ExchangeType(StrEnum):
    """AMQP exchange kinds used here."""

    TOPIC = "topic"


class QueueType(StrEnum):
    """AMQP queue kinds used here."""

    QUORUM = "quorum"
    CLASSIC = "classic"


@dataclass(frozen=True)
class ExchangeSpec:
    """A durable exchange."""

    name: str
    type: ExchangeType = ExchangeType.TOPIC
    durable: bool = True


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue, its bindings on the main exchange and its delivery/dead-letter rules."""

    name: str
    bindings: tuple[str, ...] = ()
    delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT
    message_ttl_s: float | None = DEFAULT_MESSAGE_TTL_S
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    type: QueueType = QueueType.QUORUM

    def arguments(self) -> dict[str, Any]:
        """The x-arguments this queue is declared with (must match deploy definitions)."""
        args: dict[str, Any] = {"x-queue-type": self.type.value}
        if self.delivery_limit is not None:
            args["x-delivery-limit"] = self.delivery_limit
        if self.message_ttl_s is not None:
            args["x-message-ttl"] = int(self.message_ttl_s * 1000)
        if self.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        if self.dead_letter_routing_key is not None:
            args["x-dead-letter-routing-key"] = self.dead_letter_routing_key
        return args


@dataclass(frozen=True)
class Topology:
    """All names derive from ``prefix`` so tests can run side by side on one broker."""

    prefix: str = "pdmfed"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    message_ttl_s: float = DEFAULT_MESSAGE_TTL_S
    bindings: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=lambda: BINDINGS)

    @property
    def exchange(self) -> ExchangeSpec:
        return ExchangeSpec(self.prefix)

    @property
    def dlx(self) -> ExchangeSpec:
        return ExchangeSpec(f"{self.prefix}.dlx")

    @property
    def dead_queue(self) -> QueueSpec:
        # Bound to "#" on the DLX: every dead letter lands here whatever its routing key.
        return QueueSpec(
            name=f"{self.prefix}.dead",
            bindings=("#",),
            delivery_limit=None,
            message_ttl_s=None,
        )

    @property
    def service_queues(self) -> dict[str, QueueSpec]:
        return {service: self.queue(service) for service in SERVICES}

    def queue(self, service: str) -> QueueSpec:
        """The quorum queue of ``service`` (``KeyError`` for an unknown service)."""
        if service not in SERVICES:
            raise KeyError(f"unknown service {service!r}; expected one of {SERVICES}")
        keys = tuple(key for key, subs in self.bindings.items() if service in dict(subs))
        return QueueSpec(
            name=f"{self.prefix}.{service}",
            bindings=keys,
            delivery_limit=self.delivery_limit,
            message_ttl_s=self.message_ttl_s,
            dead_letter_exchange=self.dlx.name,
            # The dead queue shows which service gave up on a message by its routing key; the
            # original routing key stays in x-death (broker) or x-pdmfed-routing-key (ours).
            dead_letter_routing_key=f"dead.{service}",
        )

    def all_queues(self) -> list[QueueSpec]:
        return [*self.service_queues.values(), self.dead_queue]

    def with_prefix(self, prefix: str) -> Topology:
        return Topology(prefix, self.delivery_limit, self.message_ttl_s, self.bindings)


DEFAULT_TOPOLOGY = Topology()
EXCHANGE = DEFAULT_TOPOLOGY.exchange.name
DLX = DEFAULT_TOPOLOGY.dlx.name
DEAD_QUEUE = DEFAULT_TOPOLOGY.dead_queue.name
SERVICE_QUEUES = DEFAULT_TOPOLOGY.service_queues


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more words."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pat: list[str], key: list[str]) -> bool:
    if not pat:
        return not key
    head, rest = pat[0], pat[1:]
    if head == "#":
        return any(_match(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and _match(rest, key[1:])


async def declare_topology(channel: Any, topology: Topology = DEFAULT_TOPOLOGY) -> None:
    """Declare exchanges, queues and bindings on an aio-pika channel (idempotent)."""
    import aio_pika

    exchange = await channel.declare_exchange(
        topology.exchange.name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        topology.dlx.name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = topology.dead_queue
    queue = await channel.declare_queue(dead.name, durable=True, arguments=dead.arguments())
    for key in dead.bindings:
        await queue.bind(dlx, key)
    for spec in topology.service_queues.values():
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments())
        for key in spec.bindings:
            await queue.bind(exchange, key)


async def delete_topology(channel: Any, topology: Topology) -> None:
    """Delete what :func:`declare_topology` declared (tests and teardown only)."""
    for spec in topology.all_queues():
        await channel.queue_delete(spec.name, if_unused=False, if_empty=False)
    for ex in (topology.exchange, topology.dlx):
        await channel.exchange_delete(ex.name)


def as_definitions(topology: Topology = DEFAULT_TOPOLOGY, *, vhost: str = "/") -> dict[str, Any]:
    """The topology as a RabbitMQ definitions document (exchanges, queues, bindings, policies)."""
    exchanges = [
        {
            "name": ex.name,
            "vhost": vhost,
            "type": ex.type.value,
            "durable": ex.durable,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for ex in (topology.exchange, topology.dlx)
    ]
    queues = [
        {
            "name": spec.name,
            "vhost": vhost,
            "durable": True,
            "auto_delete": False,
            "arguments": spec.arguments(),
        }
        for spec in topology.all_queues()
    ]
    bindings = [
        {
            "source": topology.exchange.name,
            "vhost": vhost,
            "destination": spec.name,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": {},
        }
        for spec in topology.service_queues.values()
        for key in spec.bindings
    ]
    bindings += [
        {
            "source": topology.dlx.name,
            "vhost": vhost,
            "destination": topology.dead_queue.name,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": {},
        }
        for key in topology.dead_queue.bindings
    ]
    policies = [
        {
            # A policy, not an x-argument: the bound can change without redeclaring the queue.
            "name": f"{topology.prefix}-dead-bounded",
            "vhost": vhost,
            "pattern": "^" + topology.dead_queue.name.replace(".", r"\.") + "$",
            "apply-to": "queues",
            "priority": 0,
            "definition": {
                "max-length": DEAD_QUEUE_MAX_LENGTH,
                "max-length-bytes": DEAD_QUEUE_MAX_BYTES,
                "overflow": "drop-head",
            },
        }
    ]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings, "policies": policies}
