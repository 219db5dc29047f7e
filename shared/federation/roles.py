"""The roles of the message plane (light: the CLI imports it without torch)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Role", "SERVICE_ROLES", "ENVELOPE_ROLES"]


class Role(StrEnum):
    """Who takes part in the message plane; a sender id maps to exactly one role."""

    ORCHESTRATOR = "orchestrator"
    CONNECTOR = "connector"
    TRAINER_DISPATCH = "trainer-dispatch"
    SECURITY = "security"
    AGGREGATOR = "aggregator"
    #: A factory datasite: it seals no envelope, it signs the update it trained (update.raw).
    FACTORY = "factory"


#: The four services, in the order they are listed everywhere.
SERVICE_ROLES: tuple[Role, ...] = (
    Role.CONNECTOR,
    Role.TRAINER_DISPATCH,
    Role.SECURITY,
    Role.AGGREGATOR,
)
#: Roles that seal envelopes (a factory signs content, not envelopes).
ENVELOPE_ROLES: tuple[Role, ...] = (Role.ORCHESTRATOR, *SERVICE_ROLES)
