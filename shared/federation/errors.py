"""One exception tree for pdm-federation; each rejection carries a reason (a metric label value)."""

from __future__ import annotations

__all__ = [
    "REJECT_REASONS",
    "PdmFedError",
    "ConfigError",
    "CampaignRefused",
    "EmitError",
    "WireError",
    "MalformedMessage",
    "OversizeMessage",
    "ChunkError",
    "SecurityError",
    "IntegrityError",
    "AuthError",
    "ForbiddenError",
    "ReplayError",
    "ExpiredError",
    "UnknownKeyError",
    "StaleRoundError",
    "ClaimError",
    "BusError",
    "PublishError",
    "DatasiteError",
    "DatasiteConnectionError",
    "TrainingError",
    "ApprovalPendingError",
    "PrivacyError",
    "PrivacyBudgetExceeded",
    "RobustnessError",
    "NoQuorumError",
]

#: Every reason a consumer may give for rejecting a message (metric label values).
REJECT_REASONS = (
    "replay",
    "expired",
    "integrity",
    "auth",
    "forbidden",
    "malformed",
    "oversize",
    "unknown_key",
    "stale_round",
    "invalid_stats",
    "claim_missing",
)


class PdmFedError(Exception):
    """Root of every error this project raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if reason is not None:
            self.reason = reason


class ConfigError(PdmFedError):
    """Missing, invalid or weak configuration (refuse to start)."""

    reason = "config"


# --- wire -----------------------------------------------------------------
class EmitError(PdmFedError):
    """A handler emitted a message its service may not send, or one that breaks its contract:
    its transaction fails and nothing is published (the incoming message is retried)."""

    reason = "emit"


class WireError(PdmFedError):
    """A message that cannot be decoded."""

    reason = "malformed"


class MalformedMessage(WireError):
    """Bytes that are not a valid envelope or payload."""

    reason = "malformed"


class OversizeMessage(WireError):
    """A message or tensor larger than the configured limits."""

    reason = "oversize"


class ChunkError(WireError):
    """A missing, duplicated, foreign or timed-out chunk."""

    reason = "malformed"


# --- security -------------------------------------------------------------
class SecurityError(PdmFedError):
    """A message that failed a security check."""

    reason = "integrity"


class IntegrityError(SecurityError):
    """Decryption, AAD or checksum failure: the bytes were altered."""

    reason = "integrity"


class AuthError(SecurityError):
    """Missing, unknown or invalid sender signature."""

    reason = "auth"


class ForbiddenError(SecurityError):
    """A verified sender whose role may not send this message type (see wire.contracts)."""

    reason = "forbidden"


class ReplayError(SecurityError):
    """A msg_id that was already accepted."""

    reason = "replay"


class ExpiredError(SecurityError):
    """A timestamp outside the freshness window."""

    reason = "expired"


class UnknownKeyError(SecurityError):
    """A key_id this process does not hold."""

    reason = "unknown_key"


class StaleRoundError(SecurityError):
    """A message for a round or model version that is already closed."""

    reason = "stale_round"


class ClaimError(SecurityError):
    """A claim-check reference whose sealed body is not in the shared claim store."""

    reason = "claim_missing"


# --- bus ------------------------------------------------------------------
class CampaignRefused(PdmFedError):
    """trainer-dispatch answered a campaign.start with campaign.rejected (the message says why)."""

    reason = "campaign_refused"


class BusError(PdmFedError):
    """The message bus failed (connection, channel, topology)."""

    reason = "bus"


class PublishError(BusError):
    """A publish was not confirmed or was unroutable."""

    reason = "bus"


# --- datasite -------------------------------------------------------------
class DatasiteError(PdmFedError):
    """A PySyft datasite failed or refused."""

    reason = "datasite"


class DatasiteConnectionError(DatasiteError):
    """Could not reach or log in to a datasite."""


class TrainingError(DatasiteError):
    """Training at a datasite failed or timed out."""


class ApprovalPendingError(DatasiteError):
    """A code request is waiting for the factory's approval."""


# --- privacy / robustness ---------------------------------------------------
class PrivacyError(PdmFedError):
    """Differential-privacy misuse."""

    reason = "privacy"


class PrivacyBudgetExceeded(PrivacyError):
    """The next round would spend more than max_epsilon."""


class RobustnessError(PdmFedError):
    """Robust aggregation cannot run (e.g. too few clients for the rule)."""

    reason = "robustness"


class NoQuorumError(RobustnessError):
    """Too few screened or accepted updates to aggregate: nothing is published (status no_quorum)."""

    reason = "no_quorum"

    def __init__(self, message: str = "", *, quorum: dict | None = None) -> None:
        super().__init__(message)
        #: ``{"required", "accepted", "screened", "min_clients"}``, as a round's metrics report it.
        self.quorum = dict(quorum or {})
