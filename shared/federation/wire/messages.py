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
    "Part",
    "DpSpend",
    "TrainingMetrics",
    "Verdict",
    "RejectionDetail",
    "StatusDetail",
    "Quorum",
    "RoundMetrics",
    "CampaignMetrics",
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
    "StatsRequest",
    "StatsRaw",
    "StatsScreened",
    "StatsRejected",
    "StatsPrivacy",
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
    STATS_REQUEST = "stats.request"
    STATS_RAW = "stats.raw"
    STATS_SCREENED = "stats.screened"
    STATS_REJECTED = "stats.rejected"


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


def _real(name: str, v: Any) -> float:
    """A finite number computed locally (numpy scalars included), as a float."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _fail(name, "a finite number")
    return float(v)


def _opt_real(name: str, v: Any) -> float | None:
    return None if v is None else _real(name, v)


def _count(name: str, v: Any) -> int:
    """A non-negative integer; an integral float (as older connectors sent) is taken as one."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return _int(name, v)


def _opt_int(name: str, v: Any) -> int | None:
    return None if v is None else _count(name, v)


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(name, "true or false")
    return v


def _opt_bool(name: str, v: Any) -> bool | None:
    return None if v is None else _bool(name, v)


def _str_map(name: str, v: Any) -> dict[str, str]:
    """datasite id -> reason."""
    d = _dict(name, v)
    if not all(isinstance(x, str) for x in d.values()):
        raise _fail(name, "a map of string -> string")
    return d


def _real_map(name: str, v: Any) -> dict[str, float]:
    """name -> finite number."""
    return {k: _real(f"{name}.{k}", x) for k, x in _dict(name, v).items()}


def _opt_real_map(name: str, v: Any) -> dict[str, float] | None:
    return None if v is None else _real_map(name, v)


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


def _plain(v: Any) -> Any:
    """A value as it goes on the wire: typed parts become maps (tensors stay tensors)."""
    if isinstance(v, Part):
        return v.to_payload()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


class _Typed:
    """Shared by messages and their parts: a map validated field by field, strictly."""

    @classmethod
    def _label(cls) -> str:
        return cls.__name__

    def to_payload(self) -> dict[str, Any]:
        """The payload map (tensors stay tensors; the codec encodes them)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_payload(cls, d: Any) -> Any:
        """Validate a decoded payload map and build the typed value (MalformedMessage)."""
        if not isinstance(d, Mapping):
            raise MalformedMessage(f"{cls._label()} payload must be a map")
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
                raise MalformedMessage(f"{cls._label()} payload is missing field {f.name}")
        unknown = set(d) - known
        if unknown:
            raise MalformedMessage(
                f"{cls._label()} payload has unknown fields {sorted(map(str, unknown))}"
            )
        return cls(**kwargs)


class Part(_Typed):
    """A typed nested part of a payload (``verdict``, ``detail``, ``metrics``): on the wire a map
    whose unset optional fields are left out, as before they had a type."""

    def to_payload(self) -> dict[str, Any]:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if not (getattr(self, f.name) is None and f.default is None)
        }


def _part(cls: type[Part]) -> _Check:
    """Field check of a nested part: an instance as is, a map validated as ``cls``."""

    def check(name: str, v: Any) -> Part:
        if isinstance(v, cls):
            return v
        try:
            return cls.from_payload(v)
        except MalformedMessage as exc:
            raise MalformedMessage(f"field {name}: {exc}") from exc

    return check


def _opt_part(cls: type[Part]) -> _Check:
    check = _part(cls)
    return lambda name, v: None if v is None else check(name, v)


@dataclass(frozen=True)
class DpSpend(Part):
    """What one DP-SGD training at a factory released (the record-level privacy ledger)."""

    noise_multiplier: float = _f(_real)
    sample_rate: float = _f(_real)
    steps: int = _f(_count)
    max_grad_norm: float | None = _f(_opt_real, default=None)
    delta: float | None = _f(_opt_real, default=None)
    epsilon: float | None = _f(_opt_real, default=None)


@dataclass(frozen=True)
class TrainingMetrics(Part):
    """A datasite's training figures for one update, as the connector reports them."""

    loss: float | None = _f(_opt_real, default=None)
    rmse: float | None = _f(_opt_real, default=None)
    accuracy: float | None = _f(_opt_real, default=None)
    training_time: float | None = _f(_opt_real, default=None)
    dp: DpSpend | None = _f(_opt_part(DpSpend), default=None)


@dataclass(frozen=True)
class Verdict(Part):
    """Security's verdict on an update it passed on."""

    accepted: bool = _f(_bool, default=True)
    reputation: float | None = _f(_opt_real, default=None)
    #: Security added local DP noise to the delta.
    local_noise: bool = _f(_bool, default=False)


@dataclass(frozen=True)
class RejectionDetail(Part):
    """Why security rejected an update: the findings, the scores and the sender's reputation."""

    why: list[str] = _f(_str_list, default_factory=list)
    #: Detector name -> score (Byzantine rejections).
    scores: dict[str, float] = _f(_real_map, default_factory=dict)
    reputation: float | None = _f(_opt_real, default=None)
    metrics: TrainingMetrics = _f(_part(TrainingMetrics), default_factory=TrainingMetrics)


@dataclass(frozen=True)
class StatsPrivacy(Part):
    """How round 0 released the normalisation statistics: noised (ε, δ, z, scope) or exact."""

    noised: bool = _f(_bool, default=False)
    epsilon: float | None = _f(_opt_real, default=None)
    delta: float | None = _f(_opt_real, default=None)
    noise_multiplier: float | None = _f(_opt_real, default=None)
    scope: str = _f(_str, default="")


@dataclass(frozen=True)
class StatusDetail(Part):
    """The campaign round a datasite status answers (none: a plain health change)."""

    campaign_id: str | None = _f(_opt_str, default=None)
    round_num: int | None = _f(_opt_int, default=None)
    attempt: int | None = _f(_opt_int, default=None)
    error: str | None = _f(_opt_str, default=None)


@dataclass(frozen=True)
class Quorum(Part):
    """Whether a round could publish a model: accepted of screened updates against the bounds."""

    required: int = _f(_count)
    accepted: int = _f(_count)
    screened: int = _f(_count)
    min_clients: int = _f(_count)


@dataclass(frozen=True)
class RoundMetrics(Part):
    """What the aggregator measured in a round (training figures weighted by samples)."""

    rmse: float | None = _f(_opt_real, default=None)
    loss: float | None = _f(_opt_real, default=None)
    num_samples: int = _f(_count, default=0)
    duration_s: float | None = _f(_opt_real, default=None)
    #: Std of the central DP noise added to the aggregate (0: none).
    noise_std: float = _f(_real, default=0.0)
    #: datasite id -> reputation after this round's screening.
    reputation: dict[str, float] = _f(_real_map, default_factory=dict)
    quorum: Quorum | None = _f(_opt_part(Quorum), default=None)
    #: Record-level DP (DP-SGD at the factories): datasite id -> epsilon spent so far.
    record_epsilon: dict[str, float] | None = _f(_opt_real_map, default=None)
    record_epsilon_max: float | None = _f(_opt_real, default=None)
    record_budget_allows_next: bool | None = _f(_opt_bool, default=None)


@dataclass(frozen=True)
class CampaignMetrics(RoundMetrics):
    """The last round's metrics and the campaign's client-level epsilon."""

    epsilon: float | None = _f(_opt_real, default=None)

    @classmethod
    def of_round(cls, metrics: RoundMetrics, epsilon: float | None) -> CampaignMetrics:
        return cls(
            **{f.name: getattr(metrics, f.name) for f in fields(RoundMetrics)}, epsilon=epsilon
        )


class Message(_Typed):
    """Base of the typed payloads: ``to_payload()`` / ``from_payload()`` round-trip."""

    msg_type: ClassVar[MsgType]

    @classmethod
    def _label(cls) -> str:
        return cls.msg_type.value


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
    #: The campaign's federated normalisation statistics (round 0's result; Normalizer.to_dict).
    normalizer: dict[str, Any] = _f(_dict, default_factory=dict)
    #: How those statistics were released (None: not stated, e.g. by an older trainer-dispatch).
    normalizer_privacy: StatsPrivacy | None = _f(_opt_part(StatsPrivacy), default=None)
    #: Factories whose statistics round 0 left out, with the reason code (``invalid_stats`` /
    #: ``auth``: refused by security; ``outlier_stats``: left out by the robust merge).
    normalizer_left_out: dict[str, str] = _f(_str_map, default_factory=dict)


@dataclass(frozen=True)
class RoundClose(Message):
    """trainer-dispatch → security, aggregator: collection is over; these updates are expected."""

    msg_type: ClassVar[MsgType] = MsgType.ROUND_CLOSE
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    expected: list[str] = _f(_str_list, default_factory=list)
    #: datasite id -> why it did not deliver (deadline, its error)
    failed: dict[str, str] = _f(_str_map, default_factory=dict)
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
    metrics: TrainingMetrics = _f(_part(TrainingMetrics), default_factory=TrainingMetrics)
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
    weight: float = _f(_real, default=1.0)
    metrics: TrainingMetrics = _f(_part(TrainingMetrics), default_factory=TrainingMetrics)
    verdict: Verdict = _f(_part(Verdict), default_factory=Verdict)
    expected: list[str] = _f(_str_list, default_factory=list)


@dataclass(frozen=True)
class UpdateRejected(Message):
    """Security rejected an update, with its reason."""

    msg_type: ClassVar[MsgType] = MsgType.UPDATE_REJECTED
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    reason: str = _f(_str)
    detail: RejectionDetail = _f(_part(RejectionDetail), default_factory=RejectionDetail)
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
    rejected: dict[str, str] = _f(_str_map, default_factory=dict)
    byzantine: list[Any] = _f(_list, default_factory=list)
    metrics: RoundMetrics = _f(_part(RoundMetrics), default_factory=RoundMetrics)
    epsilon: float | None = _f(_opt_float, default=None)
    status: str = _f(_str, default="aggregated")
    #: datasite id -> why it did not deliver an update this round (deadline, error)
    failed: dict[str, str] = _f(_str_map, default_factory=dict)
    global_model: dict[str, torch.Tensor] = _f(_tensors, default_factory=dict)


@dataclass(frozen=True)
class CampaignCompleted(Message):
    """Dispatch finished a campaign."""

    msg_type: ClassVar[MsgType] = MsgType.CAMPAIGN_COMPLETED
    campaign_id: str = _f(_str)
    rounds: int = _f(_int)
    reason: str = _f(_str)
    final_metrics: CampaignMetrics = _f(_part(CampaignMetrics), default_factory=CampaignMetrics)


@dataclass(frozen=True)
class DatasiteStatus(Message):
    """The connector reports a datasite's state."""

    msg_type: ClassVar[MsgType] = MsgType.DATASITE_STATUS
    datasite_id: str = _f(_str)
    status: str = _f(_str)
    detail: StatusDetail = _f(_part(StatusDetail), default_factory=StatusDetail)


@dataclass(frozen=True)
class StatsRequest(Message):
    """Round 0: dispatch asks the connector for one datasite's normalisation statistics."""

    msg_type: ClassVar[MsgType] = MsgType.STATS_REQUEST
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    attempt: int = _f(_int, default=0)


@dataclass(frozen=True)
class StatsRaw(Message):
    """A datasite's exact sensor statistics (federation.ml.fedstats), signed by its factory."""

    msg_type: ClassVar[MsgType] = MsgType.STATS_RAW
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    stats: dict[str, Any] = _f(_dict, default_factory=dict)
    stats_signature: bytes | None = _f(_opt_bytes, default=None)
    factory_key_id: str | None = _f(_opt_str, default=None)
    attempt: int = _f(_int, default=0)


@dataclass(frozen=True)
class StatsScreened(Message):
    """Security verified a datasite's statistics (factory signature, well-formed)."""

    msg_type: ClassVar[MsgType] = MsgType.STATS_SCREENED
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    stats: dict[str, Any] = _f(_dict, default_factory=dict)
    attempt: int = _f(_int, default=0)


@dataclass(frozen=True)
class StatsRejected(Message):
    """Security refused a datasite's statistics (factory signature, impossible values)."""

    msg_type: ClassVar[MsgType] = MsgType.STATS_REJECTED
    campaign_id: str = _f(_str)
    round_num: int = _f(_int)
    datasite_id: str = _f(_str)
    #: An error reason of federation.errors: ``invalid_stats`` or ``auth``.
    reason: str = _f(_str)
    why: str = _f(_str, default="")
    attempt: int = _f(_int, default=0)


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
        StatsRequest,
        StatsRaw,
        StatsScreened,
        StatsRejected,
    )
}


def parse_payload(msg_type: str | MsgType, d: Any) -> Message:
    """Build the typed message for ``msg_type`` from a decoded payload (MalformedMessage)."""
    try:
        kind = MsgType(msg_type)
    except ValueError as exc:
        raise MalformedMessage(f"unknown msg_type {msg_type!r}") from exc
    return MESSAGE_CLASSES[kind].from_payload(d)
