"""Campaign configuration: what the orchestrator asks the services to run (YAML or defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from federation.crypto.signing import check_sender_name
from federation.errors import ConfigError

__all__ = [
    "TrainingConfig",
    "PrivacyConfig",
    "RecordPrivacyConfig",
    "StatsPrivacyConfig",
    "RobustnessConfig",
    "CampaignConfig",
    "load_campaign_config",
]


#: The default aggregation rule: ceil(10 %) of the updates trimmed from each end of every
#: coordinate from six updates on, FedAvg (samples x reputation) below. Screening already drops
#: what it can tell apart; what it keeps at n = 5 is inside the honest spread, where trimming 2 of
#: 5 values per coordinate costs accuracy and helps no attack. Measured on FD001 (5 factories,
#: 2 Byzantine, 8 rounds): no attack +10 % RMSE with trimming at 5, +0 % without; ALIE +34 % vs
#: +12 % (ALIE's copies sit at the coordinate median, so trimming the honest extremes leaves them
#: a larger share). At 10 factories the rule is unchanged (see BENCHMARKS.md section 11).
DEFAULT_RULE: dict[str, Any] = {"name": "trimmed_mean", "trim_ratio": 0.1, "min_clients": 6}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingConfig(_Strict):
    """Local training at each datasite."""

    #: A built-in ("cnn", "lstm", "hybrid") or an own model, ``package.module:function``
    #: returning an nn.Module for (n_features, window), installed where the campaign runs and
    #: approved by each factory (``federation.ml.own_model``).
    model_type: str = "hybrid"
    epochs: int = Field(1, ge=1, le=100)
    learning_rate: float = Field(0.003, gt=0, le=1)
    batch_size: int = Field(64, ge=1, le=4096)
    window: int = Field(30, ge=2, le=500)
    n_features: int = Field(14, ge=1)
    max_batches: int | None = Field(None, ge=1)
    #: The starting model: "random" (seeded initialisation) or "public" (pre-trained on the
    #: public synthetic fleet, ``federation.ml.pretrain``; costs no privacy).
    init: Literal["random", "public"] = "random"
    #: Each factory returns the mean of its last half of iterates (averages DP-SGD noise away).
    average_iterates: bool = False

    @field_validator("model_type")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from federation.ml.models import SUPPORTED_MODELS, is_known_model

        if not is_known_model(value):
            raise ValueError(
                f"{value!r} is neither a built-in model {SUPPORTED_MODELS} nor an own model's "
                "'package.module:function' entry point"
            )
        return value


class PrivacyConfig(_Strict):
    """Differential privacy: clip to clip_norm, then Gaussian noise (local or central)."""

    enabled: bool = True
    mode: Literal["local", "central"] = "central"
    noise_multiplier: float = Field(0.3, ge=0)
    clip_norm: float = Field(5.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_epsilon: float | None = Field(None, gt=0)
    accountant: Literal["rdp", "pld"] = "rdp"


class RecordPrivacyConfig(_Strict):
    """Record-level DP-SGD inside each factory's training: per-sample clipping + Gaussian noise.

    This protects each factory's individual records (sensor windows); the accountant composes
    every round's sampled-Gaussian steps per factory. Client-level DP (PrivacyConfig) protects a
    whole factory's contribution, which is only meaningful with many factories.
    """

    enabled: bool = False
    noise_multiplier: float = Field(1.0, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_epsilon: float | None = Field(None, gt=0)
    #: How each factory's DP-SGD steps are composed: Renyi DP, or privacy-loss distributions
    #: (tighter: the same noise gives a smaller epsilon).
    accountant: Literal["rdp", "pld"] = "rdp"


class StatsPrivacyConfig(_Strict):
    """Round 0 under DP: each factory noises its own statistics (Gaussian mechanism) before
    signing them (federation.privacy.stats_dp). Record = one sensor row (add/remove); one
    release per factory, epsilon at ``delta``. Off by default: the statistics are then exact."""

    enabled: bool = False
    epsilon: float = Field(1.0, gt=0, le=100)
    delta: float = Field(1e-5, gt=0, lt=1)
    #: Public per-feature value bounds [lo, hi] (datasheet ranges), in the features' order:
    #: values outside are clipped before noising. Required when enabled.
    bounds: list[tuple[float, float]] = Field(default_factory=list)

    def noise_multiplier(self) -> float:
        """The noise multiplier whose one release costs ``epsilon`` at ``delta``."""
        from federation.privacy.stats_dp import stats_noise_for

        return stats_noise_for(self.epsilon, self.delta)

    def job_config(self) -> dict[str, Any]:
        """What the datasite's statistics job needs: noise multiplier and bounds."""
        return {
            "noise_multiplier": self.noise_multiplier(),
            "bounds": [list(b) for b in self.bounds],
        }


class RobustnessConfig(_Strict):
    """Byzantine screening, reputation and the robust aggregation rule.

    ``rule`` is a name or a mapping with the name and the rule's parameters, e.g.
    ``{name: multi_krum, f: 2, m: 5}`` or ``{name: trimmed_mean, trim_ratio: 0.3}`` (see
    ``federation.robust.build_rule``). The older ``aggregation: NAME`` + ``trim_ratio`` keys are
    still read and turned into ``rule``.
    """

    enabled: bool = True
    threshold: float = Field(2.0, gt=0)
    min_clients: int = Field(3, ge=1)
    rule: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_RULE))
    reputation_threshold: float = Field(0.3, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _legacy_aggregation(cls, data: Any) -> Any:
        if not isinstance(data, dict) or ("aggregation" not in data and "trim_ratio" not in data):
            return data
        data = dict(data)
        if "rule" in data:
            raise ValueError("give either rule or the older aggregation/trim_ratio keys, not both")
        name = data.pop("aggregation", "trimmed_mean")
        ratio = data.pop("trim_ratio", None)
        data["rule"] = {"name": name, **({"trim_ratio": ratio} if ratio is not None else {})}
        if ratio is not None and name != "trimmed_mean":
            data["rule"].pop("trim_ratio")
        return data

    @field_validator("rule", mode="before")
    @classmethod
    def _rule(cls, value: Any) -> dict[str, Any]:
        from federation.errors import RobustnessError
        from federation.robust.aggregators import build_rule, rule_spec

        try:
            return rule_spec(build_rule(value))
        except (RobustnessError, TypeError) as exc:
            raise ValueError(str(exc)) from exc

    @property
    def aggregation(self) -> str:
        """The rule's name."""
        return str(self.rule["name"])

    @property
    def trim_ratio(self) -> float:
        """The trimmed mean's ratio (0.1 when the rule has none): what older callers read."""
        return float(self.rule.get("trim_ratio", 0.1))

    def rule_spec(self) -> dict[str, Any]:
        """The rule as ``build_rule`` takes it."""
        return dict(self.rule)


class CampaignConfig(_Strict):
    """One federated training campaign."""

    campaign_id: str = "campaign"
    #: Datasite ids only: where each lives and how it is logged into is the connector's own
    #: registry (``federation.datasite_registry``), never something a message can say.
    datasites: list[str] = Field(default_factory=list)
    rounds: int = Field(5, ge=1, le=10_000)
    round_timeout_s: float = Field(120.0, gt=0)
    quorum: int = Field(2, ge=1)
    max_retries: int = Field(1, ge=0, le=10)
    target_rmse: float | None = Field(None, gt=0)
    seed: int = 0
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    record_privacy: RecordPrivacyConfig = Field(default_factory=RecordPrivacyConfig)
    robustness: RobustnessConfig = Field(default_factory=RobustnessConfig)
    stats_privacy: StatsPrivacyConfig = Field(default_factory=StatsPrivacyConfig)

    @field_validator("datasites", mode="before")
    @classmethod
    def _ids_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, str):
                    raise ValueError(
                        "name datasites by id only (e.g. [factory-1, factory-2]); their URLs"
                        " and credentials are in the connector's datasite registry"
                    )
                try:
                    check_sender_name(item)
                except ConfigError as exc:
                    raise ValueError(str(exc).replace("sender", "datasite")) from None
        return value

    @model_validator(mode="after")
    def _ids_unique(self) -> CampaignConfig:
        ids = list(self.datasites)
        if len(ids) != len(set(ids)):
            raise ValueError(f"datasite ids must be unique, got {ids}")
        return self

    @model_validator(mode="after")
    def _rule_bounded_under_central_dp(self) -> CampaignConfig:
        """Central DP calibrates its noise to the rule's sensitivity: a rule without a sound
        bound is refused here, not mid-campaign."""
        p, rob = self.privacy, self.robustness
        if p.enabled and p.mode == "central" and rob.enabled:
            from federation.errors import PrivacyError
            from federation.robust.aggregators import build_rule

            try:
                build_rule(rob.rule_spec()).sensitivity(max(rob.min_clients, 1), p.clip_norm)
            except PrivacyError as exc:
                raise ValueError(f"central DP: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _stats_bounds_per_feature(self) -> CampaignConfig:
        """Noisy round-0 statistics need one valid [lo, hi] per feature, known before any noise."""
        sp = self.stats_privacy
        if sp.enabled:
            from federation.errors import PrivacyError
            from federation.privacy.stats_dp import StatsNoise

            if len(sp.bounds) != self.training.n_features:
                raise ValueError(f"stats_privacy.bounds: one [lo, hi] per feature, got "
                                 f"{len(sp.bounds)} for {self.training.n_features}")  # fmt: skip
            try:
                StatsNoise(1.0, tuple(tuple(b) for b in sp.bounds))
            except PrivacyError as exc:
                raise ValueError(f"stats_privacy: {exc}") from exc
        return self

    def check_model(self) -> None:
        """ConfigError unless the model builds here and, under record-level DP-SGD, its
        per-sample gradients are correct: a campaign is refused before anything trains."""
        from federation.ml.own_model import check_campaign_model

        t = self.training
        check_campaign_model(
            t.model_type, t.n_features, t.window, record_dp=self.record_privacy.enabled
        )

    @property
    def cohort(self) -> list[str]:
        """Datasite ids taking part in every round."""
        return list(self.datasites)

    def to_payload(self) -> dict:
        """Plain dict for the wire."""
        return self.model_dump(mode="json")

    @classmethod
    def from_payload(cls, data: dict) -> CampaignConfig:
        """Validate a wire dict; a bad one is a ConfigError, never a crash."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid campaign config: {_one_line(exc)}") from exc


def _one_line(exc: ValidationError) -> str:
    """Each validation problem as `where: what`, joined on one line."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
    )


def load_campaign_config(path: str | Path) -> CampaignConfig:
    """Read a campaign YAML file and validate it."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"campaign config not found: {p}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"campaign config {p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"campaign config {p} must be a mapping at the top level")
    return CampaignConfig.from_payload(raw)
