"""Typed message payloads: one frozen dataclass per message type (contracts: wire.contracts)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
import torch

from federation.errors import MalformedMessage

__all__ = [
    "MsgType",
    "Message",
    "CampaignStart",
    "CampaignAccepted",
    "CampaignRejected",
    "RoundOpen",
    "RoundClose",
    "TrainRequest",
    "UpdateRaw",
    "UpdateScreened",
    "UpdateRejected",
    "RoundCompleted",
    "CampaignCompleted",
    "DatasiteStatus",
    "MESSAGE_CLASSES",
    "parse_payload",
]


class MsgType(StrEnum):
    """Every message type; the value is also the AMQP routing key."""

    CAMPAIGN_START = "campaign.start"
    CAMPAIGN_ACCEPTED = "campaign.accepted"
    CAMPAIGN_REJECTED = "campaign.rejected"
    ROUND_OPEN = "round.open"
    ROUND_CLOSE = "round.close"
    TRAIN_REQUEST = "train.request"
    UPDATE_RAW = "update.raw"
    UPDATE_SCREENED = "update.screened"
    UPDATE_REJECTED = "update.rejected"
    ROUND_COMPLETED = "round.completed"
    CAMPAIGN_COMPLETED = "campaign.completed"
    DATASITE_STATUS = "datasite.status"


# --- field checks: each returns the normalised value or raises MalformedMessage ---------
def _fail(name: str, what: str) -> MalformedMessage:
    return MalformedMessage(f"field {name} must be {what}")


def _str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _fail(name, "a string")
    return v


def _int(name: str, v: Any) -> int:
    if type(v) is not int or v < 0:
        raise _fail(name, "a non-negative integer")
    return v


def _float(name: str, v: Any) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise _fail(name, "a finite number")
    return float(v)


def _opt_float(name: str, v: Any) -> float | None:
    return None if v is None else _float(name, v)


def _opt_str(name: str, v: Any) -> str | None:
    return None if v is None else _str(name, v)


def _opt_bytes(name: str, v: Any) -> bytes | None:
    if v is None:
        return None
    if not isinstance(v, bytes | bytearray | memoryview):
        raise _fail(name, "bytes or None")
    return bytes(v)


def _dict(name: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        raise _fail(name, "a map with string keys")
    return dict(v)


def _list(name: str, v: Any) -> list[Any]:
    if not isinstance(v, list | tuple):
        raise _fail(name, "a list")
    return list(v)


def _str_list(name: str, v: Any) -> list[str]:
    items = _list(name, v)
    if not all(isinstance(x, str) for x in items):
        raise _fail(name, "a list of strings")
    return items


def _tensors(name: str, v: Any) -> dict[str, torch.Tensor]:
    if not isinstance(v, Mapping):
        raise _fail(name, "a map of name -> tensor")
    out: dict[str, torch.Tensor] = {}
    for key, t in v.items():
        if not isinstance(key, str):
            raise _fail(name, "a map with string keys")
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(t)
        if not isinstance(t, torch.Tensor):
            raise _fail(name, "a map of name -> tensor")
        out[key] = t
    return out


_Check = Callable[[str, Any], Any]


def _f(check: _Check, **kw: Any) -> Any:
    return field(metadata={"check": check}, **kw)


class Message:
    """Base of the typed payloads: ``to_payload()`` / ``from_payload()`` round-trip."""

    msg_type: ClassVar[MsgType]

    def to_payload(self) -> dict[str, Any]:
        """The payload map (tensors stay tensors; the codec encodes them)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_payload(cls, d: Any) -> Any:
        """Validate a decoded payload map and build the message (MalformedMessage)."""
        if not isinstance(d, Mapping):
            raise MalformedMessage(f"{cls.msg_type.value} payload must be a map")
        kwargs: dict[str, Any] = {}
        known = set()
        for f in fields(cls):  # type: ignore[arg-type]
            known.add(f.name)
            if f.name in d:
                kwargs[f.name] = f.metadata["check"](f.name, d[f.name])
            elif f.default is not MISSING:
                kwargs[f.name] = f.default
            elif f.default_factory is not MISSING:
                kwargs[f.name] = f.default_factory()
            else:
                raise MalformedMessage(f"{cls.msg_type.value} payload is missing field {f.name}")
        unknown = set(d) - known
        if unknown:
            raise MalformedMessage(
                f"{cls.msg_type.value} payload has unknown fields {sorted(map(str, unknown))}"
            )
        return cls(**kwargs)


@dataclass(frozen=True)
class CampaignStart(Message):
    """The orchestrator starts a campaign."""

    msg_type: ClassVar[MsgType] = MsgType.CAMPAIGN_START
    campaign_id: str = _f(_str)
    config: dict[str, Any] = _f(_dict, default_factory=dict)
    #: The orchestrator's id of this start; campaign.accepted / campaign.rejected echo it, so an
    #: orchestrator acts only on the answer to its own start.
    start_id: str = _f(_str, default="")


@dataclass(frozen=True)
class CampaignAccepted(Message):
    """trainer-dispatch started the campaign: the rounds it plans and the datasites it names."""

    msg_type: ClassVar[MsgType] = MsgType.CAMPAIGN_ACCEPTED
    campaign_id: str = _f(_str)
    rounds: int = _f(_int)
    datasites: list[str] = _f(_str_list, default_factory=list)
    start_id: str = _f(_str, default="")


@dataclass(frozen=True)
class CampaignRejected(Message):
    """trainer-dispatch refused a campaign.start: a reason code and one line for a person."""

    msg_type: ClassVar[MsgType] = MsgType.CAMPAIGN_REJECTED
    #: ``code``: a campaign under this id is already running or ran (nothing was changed).
    DUPLICATE: ClassVar[str] = "duplicate_campaign"
    #: ``code``: the campaign's configuration was refused (nothing was started).
    INVALID_CONFIG: ClassVar[str] = "invalid_config"

    campaign_id: str = _f(_str)
    code: str = _f(_str)
    reason: str = _f(_str)
    start_id: str = _f(_str, default="")


@dataclass(frozen=True)
class RoundOpen(Message):
    """Dispatch opens a round for a cohort of datasites."""

    msg_type: ClassVar[MsgType] = MsgType.ROUND_OPEN
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    model_version: int = _f(_int)
    cohort: list[str] = _f(_str_list, default_factory=list)
    deadline_ts: float = _f(_float, default=0.0)
    global_model: dict[str, torch.Tensor] = _f(_tensors, default_factory=dict)


@dataclass(frozen=True)
class RoundClose(Message):
    """trainer-dispatch → security, aggregator: collection is over; these updates are expected."""

    msg_type: ClassVar[MsgType] = MsgType.ROUND_CLOSE
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    expected: list[str] = _f(_str_list, default_factory=list)
    failed: dict[str, Any] = _f(_dict, default_factory=dict)
    reason: str = _f(_str, default="")


@dataclass(frozen=True)
class TrainRequest(Message):
    """Dispatch asks the connector to train at one datasite; the weights of ``model_version``
    came once per round in round.open, so the request names the version only."""

    msg_type: ClassVar[MsgType] = MsgType.TRAIN_REQUEST
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    model_version: int = _f(_int)
    training_config: dict[str, Any] = _f(_dict, default_factory=dict)
    attempt: int = _f(_int, default=0)


@dataclass(frozen=True)
class UpdateRaw(Message):
    """A datasite's local update, as the connector received it."""

    msg_type: ClassVar[MsgType] = MsgType.UPDATE_RAW
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    model_version: int = _f(_int)
    delta: dict[str, torch.Tensor] = _f(_tensors, default_factory=dict)
    num_samples: int = _f(_int, default=0)
    metrics: dict[str, Any] = _f(_dict, default_factory=dict)
    factory_signature: bytes | None = _f(_opt_bytes, default=None)
    factory_key_id: str | None = _f(_opt_str, default=None)


@dataclass(frozen=True)
class UpdateScreened(Message):
    """Security accepted (clipped, maybe noised) an update for aggregation."""

    msg_type: ClassVar[MsgType] = MsgType.UPDATE_SCREENED
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    model_version: int = _f(_int, default=0)
    delta: dict[str, torch.Tensor] = _f(_tensors, default_factory=dict)
    num_samples: int = _f(_int, default=0)
    weight: float = _f(_float, default=1.0)
    metrics: dict[str, Any] = _f(_dict, default_factory=dict)
    verdict: dict[str, Any] = _f(_dict, default_factory=dict)
    expected: list[str] = _f(_str_list, default_factory=list)


@dataclass(frozen=True)
class UpdateRejected(Message):
    """Security rejected an update, with its reason."""

    msg_type: ClassVar[MsgType] = MsgType.UPDATE_REJECTED
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    reason: str = _f(_str)
    detail: dict[str, Any] = _f(_dict, default_factory=dict)
    expected: list[str] = _f(_str_list, default_factory=list)


@dataclass(frozen=True)
class RoundCompleted(Message):
    """The aggregator closed a round."""

    msg_type: ClassVar[MsgType] = MsgType.ROUND_COMPLETED
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    model_version: int = _f(_int)
    participants: list[Any] = _f(_list, default_factory=list)
    #: datasite id -> why its update was not aggregated (byzantine, reputation, auth, ...)
    rejected: dict[str, Any] = _f(_dict, default_factory=dict)
    byzantine: list[Any] = _f(_list, default_factory=list)
    metrics: dict[str, Any] = _f(_dict, default_factory=dict)
    epsilon: float | None = _f(_opt_float, default=None)
    status: str = _f(_str, default="aggregated")
    #: datasite id -> why it did not deliver an update this round (deadline, error)
    failed: dict[str, Any] = _f(_dict, default_factory=dict)
    global_model: dict[str, torch.Tensor] = _f(_tensors, default_factory=dict)


@dataclass(frozen=True)
class CampaignCompleted(Message):
    """Dispatch finished a campaign."""

    msg_type: ClassVar[MsgType] = MsgType.CAMPAIGN_COMPLETED
    campaign_id: str = _f(_str)
    rounds: int = _f(_int)
    reason: str = _f(_str)
    final_metrics: dict[str, Any] = _f(_dict, default_factory=dict)


@dataclass(frozen=True)
class DatasiteStatus(Message):
    """The connector reports a datasite's state."""

    msg_type: ClassVar[MsgType] = MsgType.DATASITE_STATUS
    datasite_id: str = _f(_str)
    status: str = _f(_str)
    detail: dict[str, Any] = _f(_dict, default_factory=dict)


#: Message type -> payload class.
MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.msg_type: cls
    for cls in (
        CampaignStart,
        CampaignAccepted,
        CampaignRejected,
        RoundOpen,
        RoundClose,
        TrainRequest,
        UpdateRaw,
        UpdateScreened,
        UpdateRejected,
        RoundCompleted,
        CampaignCompleted,
        DatasiteStatus,
    )
}


def parse_payload(msg_type: str | MsgType, d: Any) -> Message:
    """Build the typed message for ``msg_type`` from a decoded payload (MalformedMessage)."""
    try:
        kind = MsgType(msg_type)
    except ValueError as exc:
        raise MalformedMessage(f"unknown msg_type {msg_type!r}") from exc
    return MESSAGE_CLASSES[kind].from_payload(d)
