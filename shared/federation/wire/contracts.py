"""Message contracts: per message type its payload class, who may send it and who consumes it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from federation.roles import ENVELOPE_ROLES, SERVICE_ROLES, Role
from federation.wire.messages import (
    CampaignAccepted,
    CampaignCompleted,
    CampaignRejected,
    CampaignStart,
    DatasiteStatus,
    Message,
    MsgType,
    RoundClose,
    RoundCompleted,
    RoundOpen,
    StatsRaw,
    StatsRejected,
    StatsRequest,
    StatsScreened,
    TrainRequest,
    UpdateRaw,
    UpdateRejected,
    UpdateScreened,
)

__all__ = [
    "Role",
    "ENVELOPE_ROLES",
    "SERVICE_ROLES",
    "Contract",
    "CONTRACTS",
    "contract",
    "may_send",
    "publish_keys",
    "consumed_keys",
    "sender_roles_of",
    "contracts_table",
    "may_refer",
    "reaches_orchestrator",
    "forwarded_type",
]


@dataclass(frozen=True)
class Contract:
    """One message type: its payload class, its senders and its consumers (each with why)."""

    payload: type[Message]
    senders: frozenset[Role]
    consumers: tuple[tuple[Role, str], ...]
    #: The role whose signature the payload itself carries (checked by a consumer), if any.
    content_signer: Role | None = None
    #: May travel as a claim-check reference (wire.claims) where a shared claim store is
    #: configured: types consumed by services that mount the store, and by the orchestrator
    #: only where it mounts the store too (``reaches_orchestrator``; PDMFED_CLAIM_MODELS).
    by_reference: bool = False
    #: A type whose sealed body this one may forward by reference, adding only its own fields
    #: (wire.claims): the bytes its sender received are not sealed and written again.
    forwards: MsgType | None = None

    def __post_init__(self) -> None:
        readers = (*SERVICE_ROLES, Role.ORCHESTRATOR)
        if self.by_reference and any(r not in readers for r in self.consumer_roles):
            raise ValueError(f"{self.msg_type.value}: only envelope roles can redeem claim checks")
        if self.forwards is not None and not self.by_reference:
            raise ValueError(f"{self.msg_type.value}: only a by-reference type may forward")

    @property
    def msg_type(self) -> MsgType:
        return self.payload.msg_type

    @property
    def consumer_roles(self) -> tuple[Role, ...]:
        return tuple(role for role, _ in self.consumers)


def _contract(
    payload: type[Message],
    senders: Iterable[Role],
    *consumers: tuple[Role, str],
    content_signer: Role | None = None,
    by_reference: bool = False,
    forwards: MsgType | None = None,
) -> Contract:
    return Contract(
        payload, frozenset(senders), tuple(consumers), content_signer, by_reference, forwards
    )


_O, _C, _D, _S, _A = (
    Role.ORCHESTRATOR,
    Role.CONNECTOR,
    Role.TRAINER_DISPATCH,
    Role.SECURITY,
    Role.AGGREGATOR,
)

#: Message type -> contract. The one table topology bindings, trust (who must hold whose public
#: key), broker publish permissions and consumer authorization derive from.
CONTRACTS: dict[MsgType, Contract] = {
    c.msg_type: c
    for c in (
        _contract(
            CampaignStart,
            {_O},
            (_D, "creates the campaign's round plan and opens round 0 (statistics)"),
            (_C, "keeps the campaign's config (an id's first start: a duplicate changes nothing)"),
            (_S, "takes the campaign's DP clipping and Byzantine screening settings"),
            (_A, "takes the aggregation rule, central DP settings and privacy budget"),
        ),
        _contract(
            CampaignAccepted,
            {_D},
            (_C, "checks the datasite ids against its own registry and opens their sessions"),
            (_O, "stops waiting for an answer to campaign.start; follows the rounds"),
        ),
        _contract(
            CampaignRejected,
            {_D},
            (_C, "forgets a refused campaign (a duplicate's refusal leaves the running one alone)"),
            (_S, "forgets a refused campaign's settings: a corrected start may reuse its id"),
            (_A, "forgets a refused campaign's settings: a corrected start may reuse its id"),
            (_O, "exits at once with the reason"),
        ),
        _contract(
            StatsRequest,
            {_D},
            (_C, "runs the round-0 statistics job on the named datasite's raw partition"),
        ),
        _contract(
            StatsRaw,
            {_C},
            (
                _S,
                "verifies the factory signature over the statistics and their form, refuses "
                "impossible ones (`invalid_stats`: negative variance, counts or sums out of range)",
            ),
            content_signer=Role.FACTORY,
        ),
        _contract(
            StatsScreened,
            {_S},
            (
                _D,
                "merges the cohort's statistics robustly (outlying factories left out, counts "
                "capped) into the campaign's mean/std; opens round 1",
            ),
        ),
        _contract(
            StatsRejected,
            {_S},
            (
                _D,
                "counts the datasite as answered (refused, not retried): round 0 closes once every "
                "datasite answered or was refused",
            ),
        ),
        _contract(
            RoundOpen,
            {_D},
            (_C, "keeps the round's global model: train.request names its version only"),
            (_A, "keeps the round's base model (deltas are applied to it) and opens the round"),
            (_O, "shows the round as open; keeps the campaign's normalisation statistics"),
            by_reference=True,
        ),
        _contract(
            RoundClose,
            {_D},
            (_S, "screens the round's updates together once every expected one is in"),
            (_A, "learns which verdicts to wait for (none: the round closes unchanged)"),
            (_O, "shows who was expected and who missed the deadline"),
        ),
        _contract(
            TrainRequest,
            {_D},
            (_C, "runs the send-model + local-training job on the named datasite"),
        ),
        _contract(
            UpdateRaw,
            {_C},
            (_S, "verifies the factory signature, screens and clips every update"),
            content_signer=Role.FACTORY,
            by_reference=True,
        ),
        _contract(
            UpdateScreened,
            {_S},
            (_A, "aggregates the screened update into the round's model"),
            by_reference=True,
            forwards=MsgType.UPDATE_RAW,
        ),
        _contract(
            UpdateRejected,
            {_S},
            (_A, "accounts for it: published = aggregated + rejected, per round"),
            (_O, "shows who was left out and why"),
        ),
        _contract(
            RoundCompleted,
            {_A},
            (_D, "adopts the new model; starts the next round or stops (rounds, RMSE, budget)"),
            (_O, "records the round's metrics and the latest model"),
            by_reference=True,
        ),
        _contract(
            CampaignCompleted,
            {_D},
            (_C, "drops the global model versions it kept for the campaign"),
            (_O, "ends the campaign's wait with its outcome"),
        ),
        _contract(
            DatasiteStatus,
            {_C},
            (_D, "counts trained/failed answers; retries a failed datasite within the round"),
            (_O, "shows which datasites trained or failed"),
        ),
    )
}


def contract(msg_type: str | MsgType) -> Contract:
    """The contract of ``msg_type`` (KeyError for a type that has none)."""
    return CONTRACTS[MsgType(msg_type)]


def may_send(role: str | Role, msg_type: str | MsgType) -> bool:
    """Whether a sender of ``role`` may send ``msg_type`` (False for unknown roles or types)."""
    try:
        return Role(role) in CONTRACTS[MsgType(msg_type)].senders
    except ValueError:
        return False


def may_refer(msg_type: str | MsgType) -> bool:
    """Whether ``msg_type`` may travel as a claim-check reference (False for unknown types)."""
    try:
        return CONTRACTS[MsgType(msg_type)].by_reference
    except ValueError:
        return False


def reaches_orchestrator(msg_type: str | MsgType) -> bool:
    """Whether the orchestrator consumes ``msg_type`` (it redeems a reference only where it
    mounts the claim store: a producer sends such a type by reference only when told so)."""
    try:
        return Role.ORCHESTRATOR in CONTRACTS[MsgType(msg_type)].consumer_roles
    except ValueError:
        return False


def publish_keys(role: str | Role) -> tuple[str, ...]:
    """The routing keys ``role`` may publish (its broker topic write permissions)."""
    return tuple(t.value for t, c in CONTRACTS.items() if Role(role) in c.senders)


def consumed_keys(role: str | Role) -> tuple[str, ...]:
    """The routing keys ``role`` consumes (its queue's bindings, the orchestrator's events)."""
    return tuple(t.value for t, c in CONTRACTS.items() if Role(role) in c.consumer_roles)


def sender_roles_of(role: str | Role) -> tuple[Role, ...]:
    """The roles whose envelopes ``role`` must verify: the senders of what it consumes, and
    of the bodies those types may forward."""
    consumed = [c for c in CONTRACTS.values() if Role(role) in c.consumer_roles]
    found = {s for c in consumed for s in c.senders}
    found |= {s for c in consumed if c.forwards is not None for s in CONTRACTS[c.forwards].senders}
    return tuple(r for r in ENVELOPE_ROLES if r in found)


def forwarded_type(msg_type: str | MsgType) -> MsgType | None:
    """The type whose sealed body ``msg_type`` may forward by reference, if any."""
    try:
        return CONTRACTS[MsgType(msg_type)].forwards
    except ValueError:
        return None


def contracts_table() -> str:
    """The contracts as a Markdown table (docs/architecture.md holds it; a test compares)."""
    rows = [
        "| message type | payload | sent by | consumed by |",
        "|---|---|---|---|",
    ]
    for msg_type, c in CONTRACTS.items():
        senders = ", ".join(r.value for r in ENVELOPE_ROLES if r in c.senders)
        if c.content_signer is not None:
            senders += f" (content signed by {c.content_signer.value})"
        consumers = "; ".join(f"{r.value}: {why}" for r, why in c.consumers)
        payload = f"`{c.payload.__name__}`" + (" or `ClaimReference`" if c.by_reference else "")
        if c.forwards is not None:
            payload += f" (may forward the body of an `{c.forwards.value}`)"
        rows.append(f"| `{msg_type.value}` | {payload} | {senders} | {consumers} |")
    return "\n".join(rows) + "\n"
