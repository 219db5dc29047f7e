"""The orchestrators: one federated round over PySyft datasites, and a secure campaign."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from federation.errors import (
    ConfigError,
    DatasiteConnectionError,
    MalformedMessage,
    PdmFedError,
    RobustnessError,
    TrainingError,
)

__all__ = [
    "FederatedLearningOrchestrator",
    "ProductionSecureOrchestrator",
    "InsufficientDatasitesError",
    "SEED_TRAINING_CONFIG",
    "MIN_DATASITES",
    "campaign_summary",
]

log = logging.getLogger(__name__)

#: Fewer connected datasites than this and a round refuses to run.
MIN_DATASITES = 2
#: The orchestrators' training request; `round_number` is filled in per round.
SEED_TRAINING_CONFIG: dict[str, Any] = {"epochs": 3, "learning_rate": 0.001, "batch_size": 32}
_INSUFFICIENT = "Insufficient datasites for federated learning"
#: security_config keys (beyond the seed's) handed to SecurePySyftCommunicationManager as is.
_MANAGER_PASSTHROUGH = (
    "salt",
    "clip_norm",
    "delta",
    "max_epsilon",
    "sampling_rate",
    "aggregation",
    "trim_ratio",
    "dp_mode",
    "seed",
    "reputation_threshold",
    "connect_timeout_s",
    "request_timeout_s",
    "approval_timeout_s",
    "training_timeout_s",
    "factory_trust",
)


class InsufficientDatasitesError(DatasiteConnectionError):
    """A round could not reach the minimum number of datasites (seed: "Insufficient datasites")."""


def _state_of(global_model: Any) -> dict[str, torch.Tensor]:
    """The seed's `{name: param.clone().detach()}` from an nn.Module or a state dict."""
    state_dict = getattr(global_model, "state_dict", None)
    raw = state_dict() if callable(state_dict) else global_model
    if not isinstance(raw, Mapping) or not raw:
        raise MalformedMessage(
            "global_model must be a torch module or a non-empty mapping name -> tensor, "
            f"got {type(global_model).__name__}"
        )
    out = {}
    for name, param in raw.items():
        if not isinstance(param, torch.Tensor):
            raise MalformedMessage(
                f"global_model[{name!r}] is {type(param).__name__}, not a tensor"
            )
        out[str(name)] = param.clone().detach()
    return out


def _site_configs(factory_datasites: Any) -> list[dict[str, Any]]:
    if not isinstance(factory_datasites, Sequence) or isinstance(factory_datasites, str | bytes):
        raise ConfigError(
            "factory_datasites must be a list of {'url', 'credentials', 'datasite_id'} dicts"
        )
    sites, seen = [], set()
    for i, site in enumerate(factory_datasites):
        if not isinstance(site, Mapping):
            raise ConfigError(f"factory_datasites[{i}] is {type(site).__name__}, not a dict")
        missing = [k for k in ("url", "credentials", "datasite_id") if not site.get(k)]
        if missing:
            raise ConfigError(f"factory_datasites[{i}] lacks {', '.join(missing)}")
        if not isinstance(site["credentials"], Mapping):
            raise ConfigError(f"factory_datasites[{i}].credentials must be a dict")
        datasite_id = str(site["datasite_id"])
        if datasite_id in seen:
            raise ConfigError(f"datasite {datasite_id!r} is listed twice")
        seen.add(datasite_id)
        sites.append(dict(site, datasite_id=datasite_id))
    return sites


def _is_secure(comm_manager: Any) -> bool:
    from federation.communication.secure_syft_client import SecurePySyftCommunicationManager

    return isinstance(comm_manager, SecurePySyftCommunicationManager)


class FederatedLearningOrchestrator:
    """One round: connect, send the global model, train at each factory, aggregate.

    ``use_secure_communication`` builds a SecurePySyftCommunicationManager (DP + Byzantine
    tolerance) whose passphrase is ``encryption_key`` or PDMFED_ENCRYPTION_KEY, and whose salt
    is PDMFED_KEY_SALT (``manager_options["salt"]`` overrides), both read as the services read
    them (``federation.config``: environment, then PDMFED_SECRETS_DIR); secrets are never
    embedded here. ``comm_manager`` injects a ready manager instead (the flag is then ignored;
    the manager's type decides the path, as in the seed). ``training_config`` adds keys to the
    seed's training request (e.g. model_type, seed, max_batches). ``manager_options`` go to the
    secure manager; by default DP is DP-FedAvg at aggregation (``dp_mode="central"``), because
    the seed's round never calls ``apply_differential_privacy`` and "local" would aggregate
    without any noise.
    """

    def __init__(
        self,
        use_secure_communication: bool = True,
        *,
        comm_manager: Any = None,
        encryption_key: str | bytes | None = None,
        training_config: Mapping[str, Any] | None = None,
        manager_options: Mapping[str, Any] | None = None,
        min_datasites: int = MIN_DATASITES,
    ) -> None:
        if comm_manager is not None:
            self.comm_manager = comm_manager
        elif use_secure_communication:
            from federation.communication.secure_syft_client import (
                SecurePySyftCommunicationManager,
            )

            options = {"dp_mode": "central", **dict(manager_options or {})}
            self.comm_manager = SecurePySyftCommunicationManager(
                encryption_key=encryption_key or None,
                enable_dp=options.pop("enable_dp", True),
                enable_bft=options.pop("enable_bft", True),
                **options,
            )
        else:
            from federation.communication.syft_client import PySyftCommunicationManager

            self.comm_manager = PySyftCommunicationManager(**dict(manager_options or {}))
        if training_config is not None and not isinstance(training_config, Mapping):
            raise ConfigError("training_config must be a mapping")
        self.training_overrides = dict(training_config or {})
        if not isinstance(min_datasites, int) or min_datasites < 1:
            raise ConfigError(f"min_datasites must be a positive int, got {min_datasites!r}")
        self.min_datasites = min_datasites
        self.normalizer: dict[str, Any] | None = self.training_overrides.get("normalizer")

    @property
    def secure(self) -> bool:
        """Whether rounds take the secure path (Byzantine screening, DP, security metrics)."""
        return _is_secure(self.comm_manager)

    # --- the round -------------------------------------------------------------------------
    def connect_datasites(
        self, factory_datasites: Sequence[Mapping[str, Any]]
    ) -> tuple[list[str], dict[str, str]]:
        """Connect to each site; (connected ids in order, {failed id: why})."""
        connected, failed = [], {}
        for site in _site_configs(factory_datasites):
            datasite_id = site["datasite_id"]
            # The manager keys sessions by credentials['datasite_id']; the seed keeps the id
            # beside the credentials, so bind them here or the round would address no one.
            credentials = {**site["credentials"], "datasite_id": datasite_id}
            try:
                ok = self.comm_manager.connect_to_datasite(
                    datasite_url=site["url"], credentials=credentials
                )
            except PdmFedError as exc:
                ok, failed[datasite_id] = False, str(exc)
            if ok:
                connected.append(datasite_id)
            elif datasite_id not in failed:
                info = self.comm_manager.get_connected_datasites().get(datasite_id, {})
                failed[datasite_id] = str(info.get("last_error") or "connection failed")
        return connected, failed

    def federated_normalizer(self, connected_sites: Sequence[str]) -> dict[str, Any] | None:
        """Round 0, once per orchestrator: the connected factories' exact sensor statistics
        merged robustly (federation.ml.robust_stats: outliers left out, counts capped) into
        one normaliser that every training request then carries (the datasites keep raw
        partitions, as in the services' campaigns). A ``normalizer`` given in
        ``training_config`` is used as is; a manager without ``request_stats`` (a unit-test
        fake) trains on the partitions as they are."""
        if self.normalizer is not None:
            return self.normalizer
        request_stats = getattr(self.comm_manager, "request_stats", None)
        if request_stats is None:
            return None
        from federation.ml.data import DatasetError
        from federation.ml.fedstats import SensorStats
        from federation.ml.robust_stats import robust_merge

        parts, failed = {}, {}
        for datasite_id in connected_sites:
            result = request_stats({"campaign_id": "orchestrator-round-0"}, datasite_id)
            if not isinstance(result, Mapping) or result.get("error") or "stats" not in result:
                reason = result.get("error") if isinstance(result, Mapping) else repr(result)
                failed[datasite_id] = str(reason)
                log.warning("round 0: %s sent no statistics: %s", datasite_id, reason)
                continue
            try:
                parts[datasite_id] = SensorStats.from_dict(result["stats"])
            except DatasetError as exc:  # statistics no partition can have: that factory is out
                failed[datasite_id] = str(exc)
                log.warning("round 0: %s sent invalid statistics: %s", datasite_id, exc)
        try:
            merged = robust_merge(parts) if parts else None
        except DatasetError as exc:  # no majority agrees
            raise TrainingError(f"round 0: {exc}") from exc
        for datasite_id, reason in (merged.rejected if merged else {}).items():
            failed[datasite_id] = reason
            log.warning("round 0: statistics of %s left out: %s", datasite_id, reason)
        kept = merged.kept if merged else []
        if len(kept) < self.min_datasites:
            raise TrainingError(
                f"round 0: statistics kept from {len(kept)} datasites, need {self.min_datasites} "
                f"({'; '.join(f'{k}: {v}' for k, v in failed.items()) or 'none failed'})"
            )
        self.normalizer = merged.normalizer.to_dict()
        return self.normalizer

    def execute_federated_round(
        self,
        global_model: Any,
        factory_datasites: Sequence[Mapping[str, Any]],
        round_num: int,
    ) -> dict[str, Any]:
        """Execute one complete federated learning round.

        Secure manager: {'aggregated_model', 'participating_sites', 'byzantine_clients',
        'security_metrics'}; standard manager: {'aggregated_model', 'participating_sites',
        'training_results'}. Both also carry 'round_num', 'failed_sites' ({id: why}) and
        'duration_s'; the secure result also 'training_results' and 'reputation' (scores after
        this round's screening). Raises
        InsufficientDatasitesError below ``min_datasites`` connected datasites and
        TrainingError when no datasite returns an update.
        """
        started = time.perf_counter()
        if isinstance(round_num, bool) or not isinstance(round_num, int) or round_num < 0:
            raise ConfigError(f"round_num must be an int >= 0, got {round_num!r}")
        model_parameters = _state_of(global_model)

        # Step 1: connect to all factory datasites
        connected_sites, failed = self.connect_datasites(factory_datasites)
        if len(connected_sites) < self.min_datasites:
            why = "; ".join(f"{ds}: {reason}" for ds, reason in failed.items()) or "none given"
            raise InsufficientDatasitesError(
                f"{_INSUFFICIENT}: {len(connected_sites)} connected, need at least "
                f"{self.min_datasites} (failed: {why})"
            )

        # Step 2: distribute the global model
        distribution_success = {}
        for datasite_id in connected_sites:
            distribution_success[datasite_id] = bool(
                self.comm_manager.send_model(model_parameters, datasite_id)
            )
            if not distribution_success[datasite_id]:
                failed[datasite_id] = "send_model failed"

        # Step 3: request local training (normalised with round 0's federated statistics)
        training_config = {
            **SEED_TRAINING_CONFIG,
            **self.training_overrides,
            "round_number": round_num,
        }
        normalizer = self.federated_normalizer(connected_sites)
        if normalizer is not None:
            training_config["normalizer"] = normalizer
        training_results: dict[str, dict[str, Any]] = {}
        for datasite_id in connected_sites:
            if not distribution_success[datasite_id]:
                continue
            result = self.comm_manager.request_training(training_config, datasite_id)
            if not isinstance(result, Mapping) or result.get("error"):
                reason = result.get("error") if isinstance(result, Mapping) else repr(result)
                failed[datasite_id] = f"training failed: {reason}"
                log.warning("round %d: %s did not train: %s", round_num, datasite_id, reason)
                continue
            training_results[datasite_id] = dict(result)
        if not training_results:
            raise TrainingError(
                f"round {round_num}: no datasite returned a model update "
                f"({'; '.join(f'{k}: {v}' for k, v in failed.items())})"
            )

        # Step 4: aggregate (secure: Byzantine screening, reputation, robust/DP aggregation)
        common = {
            "round_num": round_num,
            "failed_sites": failed,
            "training_results": training_results,
        }
        if self.secure:
            secure_updates = [
                {
                    "datasite_id": datasite_id,
                    "model_update": result.get("model_update", {}),
                    "round_num": round_num,
                    "num_samples": result.get("num_samples", 0),
                }
                for datasite_id, result in training_results.items()
            ]
            aggregated_model, byzantine_clients = self.secure_aggregation_with_bft(secure_updates)
            out = {
                "aggregated_model": aggregated_model,
                "participating_sites": connected_sites,
                "byzantine_clients": byzantine_clients,
                "security_metrics": self.comm_manager.get_security_metrics(),
                "reputation": dict(
                    self.comm_manager.get_client_reputation_report()["client_reputations"]
                ),
                **common,
            }
        else:
            model_updates = [result["model_update"] for result in training_results.values()]
            out = {
                "aggregated_model": self._simple_average_aggregation(model_updates),
                "participating_sites": connected_sites,
                **common,
            }
        out["duration_s"] = time.perf_counter() - started
        return out

    def secure_aggregation_with_bft(
        self, client_updates: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The secure manager's flow: detect, filter by reputation, aggregate."""
        if not self.secure:
            raise ConfigError("secure aggregation needs a SecurePySyftCommunicationManager")
        return self.comm_manager.secure_aggregation_with_bft(client_updates)

    @staticmethod
    def _simple_average_aggregation(
        model_updates: Sequence[Mapping[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Unweighted coordinate-wise mean of full model states (the seed's standard path)."""
        if not model_updates:
            raise RobustnessError("no model updates to average")
        names = list(model_updates[0])
        for i, update in enumerate(model_updates):
            if not isinstance(update, Mapping) or list(update) != names:
                raise RobustnessError(f"model update {i} does not have the same parameters")
        out = {}
        for name in names:
            tensors = [u[name] for u in model_updates]
            if not all(isinstance(t, torch.Tensor) for t in tensors):
                raise RobustnessError(f"parameter {name!r} is not a tensor in every update")
            if len({tuple(t.shape) for t in tensors}) != 1:
                raise RobustnessError(f"parameter {name!r} has different shapes across updates")
            stacked = torch.stack([t.detach().cpu() for t in tensors])
            if stacked.is_floating_point():
                out[name] = stacked.mean(dim=0)
            else:  # counters such as BatchNorm's num_batches_tracked
                out[name] = stacked.double().mean(dim=0).round().to(stacked.dtype)
        return out


# --- production campaign ------------------------------------------------------------------
def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


class ProductionSecureOrchestrator:
    """The production campaign: secure rounds graded by a SecurityMonitor.

    ``security_config`` takes the seed's keys (encryption_key, enable_differential_privacy,
    noise_multiplier, enable_byzantine_tolerance, byzantine_threshold, min_clients_for_bft);
    ``encryption_key`` falls back to PDMFED_ENCRYPTION_KEY and ``salt`` to PDMFED_KEY_SALT (read
    as the services read them; ConfigError when unset outside `pdmfed demo`). Optional:
    ``violation_limit`` for the monitor and the secure manager's own options (dp_mode,
    clip_norm, max_epsilon, ...; dp_mode defaults to "central" so that the aggregate is
    actually noised).
    """

    def __init__(
        self,
        security_config: Mapping[str, Any],
        *,
        comm_manager: Any = None,
        training_config: Mapping[str, Any] | None = None,
    ) -> None:
        from federation.communication.secure_syft_client import SecurePySyftCommunicationManager
        from federation.monitoring.monitors import SecurityMonitor

        if not isinstance(security_config, Mapping):
            raise ConfigError("security_config must be a mapping")
        self.security_config = dict(security_config)
        if comm_manager is not None:
            self.secure_comm = comm_manager
        else:
            options = {k: security_config[k] for k in _MANAGER_PASSTHROUGH if k in security_config}
            options.setdefault("dp_mode", "central")
            # Initialize secure communication with production settings
            self.secure_comm = SecurePySyftCommunicationManager(
                encryption_key=security_config.get("encryption_key") or None,
                enable_dp=security_config.get("enable_differential_privacy", True),
                noise_multiplier=security_config.get("noise_multiplier", 1.0),
                enable_bft=security_config.get("enable_byzantine_tolerance", True),
                bft_threshold=security_config.get("byzantine_threshold", 2.0),
                min_clients=security_config.get("min_clients_for_bft", 3),
                **options,
            )
        # Security monitoring
        self.security_monitor = SecurityMonitor(
            self.secure_comm, violation_limit=int(security_config.get("violation_limit", 5))
        )
        self.round_orchestrator = FederatedLearningOrchestrator(
            comm_manager=self.secure_comm, training_config=training_config
        )
        self.global_model: dict[str, torch.Tensor] | None = None

    # --- one round -------------------------------------------------------------------------
    def _initial_model(self, campaign_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if campaign_config.get("global_model") is not None:
            return _state_of(campaign_config["global_model"])
        from federation.ml.models import build_model

        model_type = campaign_config.get("model_type", "cnn")
        n_features, window = campaign_config.get("n_features"), campaign_config.get("window")
        if not n_features or not window:
            n_features, window = self._shape_from_datasites(campaign_config["factory_datasites"])
        torch.manual_seed(int(campaign_config.get("seed", 0)))
        return _state_of(build_model(model_type, int(n_features), int(window)))

    def _shape_from_datasites(self, factory_datasites: Sequence[Mapping[str, Any]]) -> tuple:
        """(n_features, window) as the first reachable datasite reports its partition."""
        connected, failed = self.round_orchestrator.connect_datasites(factory_datasites)
        info = self.secure_comm.get_connected_datasites()
        for datasite_id in connected:
            caps = info.get(datasite_id, {}).get("capabilities", {})
            if caps.get("n_features") and caps.get("window"):
                return int(caps["n_features"]), int(caps["window"])
        raise ConfigError(
            "campaign_config has no global_model and no n_features/window, and no datasite "
            f"reported its data shape (failed: {failed or 'none'})"
        )

    def execute_secure_round(
        self, round_num: int, campaign_config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One secure round over campaign_config['factory_datasites'] from the current model.

        The first round starts from campaign_config['global_model'] (module or state dict) or a
        fresh campaign_config['model_type'] model; later rounds from the last aggregate.
        """
        if not isinstance(campaign_config, Mapping) or "factory_datasites" not in campaign_config:
            raise ConfigError("campaign_config needs 'factory_datasites'")
        if self.global_model is None:
            self.global_model = self._initial_model(campaign_config)
        if campaign_config.get("model_type"):
            self.round_orchestrator.training_overrides.setdefault(
                "model_type", campaign_config["model_type"]
            )
        result = self.round_orchestrator.execute_federated_round(
            self.global_model, campaign_config["factory_datasites"], round_num
        )
        self.global_model = {k: v.detach().clone() for k, v in result["aggregated_model"].items()}
        return result

    # --- the campaign ----------------------------------------------------------------------
    def execute_secure_training_campaign(
        self, campaign_config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run up to max_rounds secure rounds; stop at a critical security level.

        Returns the seed's {'rounds', 'security_incidents', 'byzantine_attacks',
        'overall_security_level'} plus 'round_security' (each round's assessment),
        'terminated_early', 'termination_reason' ('max_rounds', 'critical_security' or
        'round_failed') and 'final_model'. A round that cannot run (too few datasites, no
        update) becomes a high-severity incident and ends the campaign.
        """
        if not isinstance(campaign_config, Mapping):
            raise ConfigError("campaign_config must be a mapping")
        max_rounds = _positive_int(campaign_config.get("max_rounds"), "campaign_config.max_rounds")
        campaign_results: dict[str, Any] = {
            "rounds": [],
            "security_incidents": [],
            "byzantine_attacks": [],
            "overall_security_level": "unknown",
            "round_security": [],
            "terminated_early": False,
            "termination_reason": "max_rounds",
        }
        for round_num in range(max_rounds):
            # Execute secure round
            try:
                round_result = self.execute_secure_round(round_num, campaign_config)
            except (DatasiteConnectionError, TrainingError, RobustnessError) as exc:
                log.error("round %d could not run: %s", round_num, exc)
                campaign_results["security_incidents"].append(
                    {
                        "round_num": round_num,
                        "type": "round_failed",
                        "severity": "high",
                        "detail": str(exc),
                        "error_type": type(exc).__name__,
                    }
                )
                campaign_results["terminated_early"] = True
                campaign_results["termination_reason"] = "round_failed"
                break
            campaign_results["rounds"].append(round_result)

            # Monitor security
            security_status = self.security_monitor.assess_round_security(round_result)
            campaign_results["round_security"].append(security_status)
            if security_status["incidents"]:
                campaign_results["security_incidents"].extend(security_status["incidents"])
            if security_status["byzantine_attacks"]:
                campaign_results["byzantine_attacks"].extend(security_status["byzantine_attacks"])

            # Check if security compromise requires campaign termination
            if security_status["security_level"] == "critical":
                log.critical(
                    "critical security breach detected, terminating campaign at round %d",
                    round_num,
                )
                campaign_results["terminated_early"] = round_num + 1 < max_rounds
                campaign_results["termination_reason"] = "critical_security"
                break

        # Final security assessment
        campaign_results["overall_security_level"] = self.security_monitor.assess_campaign_security(
            campaign_results
        )
        campaign_results["final_model"] = self.global_model
        return campaign_results


def campaign_summary(
    campaign_results: Mapping[str, Any],
    *,
    campaign_id: str,
    config: Mapping[str, Any] | None = None,
    rmse: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """A ProductionSecureOrchestrator campaign as the report's summary.json (`pdmfed report`).

    ε per round is the manager's `epsilon_spent` after that round (None while no noise was
    spent); reputation is the round's `reputation` (scores after its screening). ``rmse`` maps
    a round number to a test RMSE measured by the caller.
    """
    rmse = dict(rmse or {})
    rounds = []
    for r in campaign_results.get("rounds") or []:
        metrics = (r.get("security_metrics") or {}).get("security_metrics") or {}
        eps = metrics.get("epsilon_spent")
        eps = (
            float(eps) if isinstance(eps, int | float) and math.isfinite(eps) and eps > 0 else None
        )
        num = int(r.get("round_num", len(rounds)))
        rounds.append(
            {
                "round_num": num,
                "rmse": rmse.get(num),
                "epsilon": eps,
                "participants": [str(s) for s in r.get("participating_sites") or []],
                "rejected": {str(k): str(v) for k, v in (r.get("rejected") or {}).items()},
                "byzantine": [str(b) for b in r.get("byzantine_clients") or []],
                "duration_s": r.get("duration_s"),
                "reputation": {str(k): float(v) for k, v in (r.get("reputation") or {}).items()},
            }
        )
    last = rounds[-1] if rounds else None
    return {
        "campaign_id": campaign_id,
        "config": dict(config or {}),
        "rounds": rounds,
        "rejections_by_reason": {},
        "final": {
            "rmse": last["rmse"] if last else None,
            "epsilon": last["epsilon"] if last else None,
            "rounds": len(rounds),
            "reason": str(campaign_results.get("termination_reason", "")),
        },
    }
