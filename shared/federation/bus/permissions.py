"""Broker least privilege: each role's RabbitMQ user may publish only the routing keys it sends.

Per role (user ``pdmfed-<role>``), on the deployment's vhost:

- configure: nothing shared. The services configure nothing at all (the broker loads the
  topology from its definitions; they start with PDMFED_DECLARE_TOPOLOGY=false); the
  orchestrator only its own exclusive event queue (``amq_<uuid hex>``).
- write: the main exchange and the dead-letter exchange, and no queue (so it binds nothing);
  the orchestrator also its own event queue (the destination of its bindings).
- read: its own queue only; the orchestrator its event queue and the main exchange (the
  source of its bindings).
- topic permissions, on both exchanges (RabbitMQ allows every routing key on an exchange a
  user has no topic permission for, so both are always set): write only the message types
  the role sends on the main exchange and only ``dead.<its role>`` on the DLX; read
  (the binding keys it may bind) nothing, except the orchestrator's event types.

Which message types a role sends and the orchestrator follows come from the message contracts
(federation.wire.contracts) alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from federation.bus.topology import DEFAULT_TOPOLOGY, Topology
from federation.roles import ENVELOPE_ROLES, Role

__all__ = [
    "ROLES",
    "ORCHESTRATOR",
    "event_keys",
    "broker_user",
    "publish_keys",
    "permissions",
    "topic_permissions",
    "permission_definitions",
]

ORCHESTRATOR = Role.ORCHESTRATOR.value
#: Everyone with a broker user: the orchestrator and the four services.
ROLES: tuple[str, ...] = tuple(r.value for r in ENVELOPE_ROLES)
#: The orchestrator's event queue: aio-pika's robust channel names an unnamed queue
#: ``amq_<uuid4 hex>`` itself (to redeclare it after a reconnect); exclusive to its connection.
_EVENT_QUEUE = r"amq_[0-9a-f]{32}"
_NOTHING = "^$"


def broker_user(role: str, prefix: str = "pdmfed") -> str:
    """The RabbitMQ user of ``role`` (``pdmfed-connector``; tests use their own prefix)."""
    _check(role)
    return f"{prefix}-{role}"


def publish_keys(role: str) -> tuple[str, ...]:
    """The routing keys (message types) ``role`` may publish: its senders' column of the message
    contracts (federation.wire.contracts), the same table consumers authorize senders by."""
    from federation.wire.contracts import publish_keys as contract_keys

    _check(role)
    return tuple(sorted(contract_keys(role)))


def event_keys() -> tuple[str, ...]:
    """What the orchestrator binds its event queue to: the types it consumes (contracts)."""
    from federation.wire.contracts import Role, consumed_keys

    return tuple(sorted(consumed_keys(Role.ORCHESTRATOR)))


def _check(role: str) -> None:
    if role not in ROLES:
        raise KeyError(f"unknown broker role {role!r}; expected one of {ROLES}")


def _exactly(names: Iterable[str]) -> str:
    names = sorted(set(names))
    return "^(" + "|".join(re.escape(n) for n in names) + ")$" if names else _NOTHING


def permissions(role: str, topology: Topology = DEFAULT_TOPOLOGY) -> dict[str, str]:
    """``role``'s configure / write / read regular expressions on the vhost."""
    exchanges = [topology.exchange.name, topology.dlx.name]
    if role == ORCHESTRATOR:
        return {
            "configure": f"^{_EVENT_QUEUE}$",
            "write": f"^({'|'.join(map(re.escape, exchanges))}|{_EVENT_QUEUE})$",
            "read": f"^({re.escape(topology.exchange.name)}|{_EVENT_QUEUE})$",
        }
    return {
        "configure": _NOTHING,
        "write": _exactly(exchanges),
        "read": _exactly([topology.queue(role).name]),
    }


def topic_permissions(role: str, topology: Topology = DEFAULT_TOPOLOGY) -> list[dict[str, str]]:
    """``role``'s topic permissions, one per exchange (both exchanges, always)."""
    binds = event_keys() if role == ORCHESTRATOR else ()
    return [
        {
            "exchange": topology.exchange.name,
            "write": _exactly(publish_keys(role)),
            "read": _exactly(binds),
        },
        {"exchange": topology.dlx.name, "write": _exactly([f"dead.{role}"]), "read": _NOTHING},
    ]


def permission_definitions(
    vhost: str,
    topology: Topology = DEFAULT_TOPOLOGY,
    *,
    user_prefix: str = "pdmfed",
    roles: Iterable[str] = ROLES,
) -> dict[str, list[dict[str, Any]]]:
    """The ``permissions`` and ``topic_permissions`` sections of a RabbitMQ definitions file."""
    perms, topics = [], []
    for role in roles:
        user = broker_user(role, user_prefix)
        perms.append({"user": user, "vhost": vhost, **permissions(role, topology)})
        topics += [{"user": user, "vhost": vhost, **t} for t in topic_permissions(role, topology)]
    return {"permissions": perms, "topic_permissions": topics}
