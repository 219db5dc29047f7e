"""The message bus: one interface, RabbitMQ and in-memory backends, topology, secure middleware."""

from federation.bus.base import (
    Bus,
    DeadLetter,
    Delivery,
    Handler,
    RejectMessage,
    RequeueMessage,
    dead_letter_info,
)
from federation.bus.memory import InMemoryBroker, InMemoryBus
from federation.bus.topology import (
    DEAD_QUEUE,
    DEFAULT_TOPOLOGY,
    DLX,
    EXCHANGE,
    SERVICE_QUEUES,
    QueueSpec,
    Topology,
    as_definitions,
    declare_topology,
)

__all__ = [
    "Bus",
    "DeadLetter",
    "Delivery",
    "Handler",
    "RejectMessage",
    "RequeueMessage",
    "dead_letter_info",
    "InMemoryBroker",
    "InMemoryBus",
    "RabbitBus",
    "SecureEndpoint",
    "DEAD_QUEUE",
    "DEFAULT_TOPOLOGY",
    "DLX",
    "EXCHANGE",
    "SERVICE_QUEUES",
    "QueueSpec",
    "Topology",
    "as_definitions",
    "declare_topology",
]


def __getattr__(name: str) -> object:
    # Imported on first use: aio-pika and the crypto stack are not needed by the in-memory demo
    # path that only touches the interface.
    if name == "RabbitBus":
        from federation.bus.rabbitmq import RabbitBus

        return RabbitBus
    if name == "SecureEndpoint":
        from federation.bus.middleware import SecureEndpoint

        return SecureEndpoint
    raise AttributeError(f"module 'federation.bus' has no attribute {name!r}")
