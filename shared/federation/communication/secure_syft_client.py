"""The seed's SecurePySyftCommunicationManager: sealed updates, differential privacy and Byzantine tolerance."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from federation.communication.syft_client import PySyftCommunicationManager
from federation.config import load_settings
from federation.crypto import KeyRing, ReplayGuard, Sealer
from federation.crypto.replay import InMemorySeenStore
from federation.errors import (
    ConfigError,
    MalformedMessage,
    PdmFedError,
    PrivacyError,
    RobustnessError,
    SecurityError,
    WireError,
)
from federation.monitoring.metrics import DEFAULT_CAMPAIGN
from federation.privacy import CentralDP, PrivacyAccountant, privatize_update
from federation.robust import ReputationBook, ScreeningPolicy, TrimmedMean, Verdicts, build_rule
from federation.robust.pipeline import Quorum, judge, quorum, trusted
from federation.wire.envelope import Envelope
from federation.wire.messages import MsgType

__all__ = ["SecurePySyftCommunicationManager", "DP_MODES"]

#: "local": each update is noised (the seed's behaviour); "central": DP-FedAvg noises the sum once.
DP_MODES = ("local", "central")
_PAYLOAD_KEY = "model_update"
_LOCAL_LEDGER = "_local"


def _as_updates(updates: Any) -> list[dict[str, Any]]:
    if not isinstance(updates, Sequence) or isinstance(updates, str | bytes):
        raise RobustnessError(
            "updates must be a list of {'datasite_id', 'model_update', ...} dicts"
        )
    out = []
    for i, u in enumerate(updates):
        if not isinstance(u, Mapping) or "model_update" not in u or "datasite_id" not in u:
            raise RobustnessError(f"update {i} needs 'datasite_id' and 'model_update'")
        mu = u["model_update"]
        if (
            not isinstance(mu, Mapping)
            or not mu
            or not all(isinstance(t, torch.Tensor) for t in mu.values())
        ):
            raise RobustnessError(
                f"update {i} ('{u['datasite_id']}'): model_update must map names to tensors"
            )
        out.append(dict(u))
    return out


def _key_material(
    encryption_key: str | bytes | None, salt: str | bytes | None, key_id: str | None
) -> tuple[str | bytes, str | bytes, str]:
    """The passphrase, salt and key id to seal with, as the services derive them.

    An argument given wins; each one left out comes from ``federation.config`` settings, the
    services' own loader: PDMFED_ENCRYPTION_KEY / PDMFED_KEY_SALT / PDMFED_KEY_ID from the
    environment, then from the files in PDMFED_SECRETS_DIR. Only ``pdmfed demo``
    (PDMFED_DEMO=1) falls back to the public demo passphrase and salt; otherwise a missing one
    is a ConfigError naming its variable, never a built-in value.
    """
    if encryption_key is not None and (
        not isinstance(encryption_key, str | bytes) or not encryption_key
    ):
        raise ConfigError("encryption_key must be a non-empty passphrase")
    if salt is not None and (not isinstance(salt, str | bytes) or not salt):
        raise ConfigError("salt must be a non-empty string (or left out: PDMFED_KEY_SALT)")
    if encryption_key is None or salt is None or key_id is None:
        settings = load_settings()
        if encryption_key is None:
            encryption_key = settings.passphrase()
        if salt is None:
            salt = settings.salt()
        if key_id is None:
            key_id = settings.key_id
    return encryption_key, salt, key_id


class SecurePySyftCommunicationManager(PySyftCommunicationManager):
    """The secure manager's API over our envelope (AES-256-GCM, header AAD, checksum, replay guard),
    clip-then-noise DP with a budgeted accountant, robust screening, reputation and aggregation.

    Updates may be full weights (as in the seed) or deltas. When the global model that was sent
    out is known (``send_model`` records it, or ``set_reference_model``), screening, clipping and
    aggregation work on ``update - reference``, which is what they are meant for.

    The sealing key is derived as the services derive theirs: ``encryption_key``, ``salt`` and
    ``key_id`` when given, otherwise PDMFED_ENCRYPTION_KEY, PDMFED_KEY_SALT and PDMFED_KEY_ID
    through ``federation.config`` (the environment, then PDMFED_SECRETS_DIR files). Outside
    ``pdmfed demo`` (PDMFED_DEMO) a missing passphrase or salt raises ConfigError naming the
    variable; there is no built-in salt.
    """

    def __init__(
        self,
        encryption_key: str | bytes | None = None,
        enable_dp: bool = True,
        noise_multiplier: float = 1.0,
        enable_bft: bool = True,
        bft_threshold: float = 2.0,
        min_clients: int = 3,
        *,
        quorum: int = 1,
        salt: str | bytes | None = None,
        clip_norm: float = 1.0,
        delta: float = 1e-5,
        max_epsilon: float | None = None,
        sampling_rate: float = 1.0,
        aggregation: str | Mapping[str, Any] = "trimmed_mean",
        trim_ratio: float = 0.1,
        dp_mode: str = "local",
        seed: int | None = None,
        reputation_threshold: float = 0.3,
        accounting: str = "rdp",
        sender: str = "secure-comm",
        key_id: str | None = None,
        identity: Any = None,
        trust: Any = None,
        require_signature: bool | None = None,
        replay: ReplayGuard | None = None,
        window_s: float = 630.0,
        transport: Callable[[str, bytes], Any] | None = None,
        metrics: Any = None,
        campaign_id: str = DEFAULT_CAMPAIGN,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        passphrase, salt, key_id = _key_material(encryption_key, salt, key_id)
        if dp_mode not in DP_MODES:
            raise ConfigError(f"dp_mode must be one of {DP_MODES}, got {dp_mode!r}")
        if not (isinstance(bft_threshold, int | float) and bft_threshold > 0):
            raise ConfigError(f"bft_threshold must be a positive number, got {bft_threshold!r}")
        if not isinstance(min_clients, int) or min_clients < 1:
            raise ConfigError(f"min_clients must be a positive int, got {min_clients!r}")
        if not isinstance(quorum, int) or quorum < 1:
            raise ConfigError(f"quorum must be a positive int, got {quorum!r}")
        for name, value in (("noise_multiplier", noise_multiplier), ("clip_norm", clip_norm)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if clip_norm <= 0:
            raise ConfigError("clip_norm must be > 0")
        self.differential_privacy_enabled = bool(enable_dp)
        self.byzantine_fault_tolerance_enabled = bool(enable_bft)
        self.noise_multiplier = float(noise_multiplier)
        self.bft_threshold = float(bft_threshold)
        self.min_clients = int(min_clients)
        #: Accepted updates ``secure_aggregation_with_bft`` needs (with ``min_clients`` screened).
        self.quorum = int(quorum)
        self.clip_norm = float(clip_norm)
        self.delta = float(delta)
        self.max_epsilon = max_epsilon
        self.sampling_rate = float(sampling_rate)
        self.dp_mode = dp_mode
        self.trim_ratio = float(trim_ratio)
        self.reputation_threshold = float(reputation_threshold)
        self.accounting = accounting
        self.aggregation = aggregation
        try:
            spec = dict(aggregation) if isinstance(aggregation, Mapping) else {"name": aggregation}
            if spec["name"] == "trimmed_mean":
                spec.setdefault("trim_ratio", trim_ratio)
            self._aggregator = build_rule(spec)
            # Built now so bad DP settings fail at construction, not mid-campaign.
            self._central_ledger = PrivacyAccountant(
                self.noise_multiplier, self.sampling_rate, self.delta, max_epsilon, accounting
            )
        except PdmFedError as exc:
            raise ConfigError(f"invalid security configuration: {exc}") from exc
        self._local_ledgers: dict[str, PrivacyAccountant] = {}
        self._generator = torch.Generator()
        self._generator.manual_seed(
            seed if seed is not None else int.from_bytes(os.urandom(8), "little")
        )

        keyring = KeyRing.from_passphrase(passphrase, salt, key_id)
        if require_signature is None:
            require_signature = identity is not None and trust is not None
        self._sealer = Sealer(
            keyring,
            sender=sender,
            identity=identity,
            trust=trust,
            replay=replay or ReplayGuard(InMemorySeenStore(), window_s, clock=clock),
            require_signature=require_signature,
            window_s=window_s,
            clock=clock,
        )
        self._transport = transport
        self._metrics = metrics
        #: The `campaign` label of this manager's metric series.
        self.campaign_id = str(campaign_id)
        self._sec_lock = threading.RLock()
        self.reputation = ReputationBook()
        self.reference_model: dict[str, torch.Tensor] | None = None
        self.last_verdicts: Verdicts | None = None
        self._norm_history: dict[str, list[float]] = {}
        self._counters = {
            "encrypted_messages": 0,
            "decrypted_messages": 0,
            "authentication_checks": 0,
            "security_violations": 0,
            "dp_noise_applications": 0,
            "byzantine_attacks_detected": 0,
            "clients_filtered": 0,
            "aggregations": 0,
            "no_quorum_refusals": 0,
        }
        self._violations_by_reason: dict[str, int] = {}

    # --- encryption -------------------------------------------------------------------
    def encrypt_model_update(
        self, model_update: Mapping[str, torch.Tensor], datasite_id: str = "", round_num: int = 0
    ) -> dict[str, Any]:
        """Seal ``model_update`` into the seed's secure package (a dict of envelope fields)."""
        if not isinstance(model_update, Mapping):
            raise MalformedMessage("model_update must be a mapping of name -> tensor")
        env = self._sealer.seal_envelope(
            MsgType.UPDATE_RAW,
            {_PAYLOAD_KEY: dict(model_update)},
            datasite_id=str(datasite_id),
            round_num=int(round_num),
        )
        with self._sec_lock:
            self._counters["encrypted_messages"] += 1
        package = env.to_dict()
        package["encrypted_data"] = bytes(package["encrypted_data"])
        return package

    def decrypt_model_update(self, package: Mapping[str, Any] | bytes) -> dict[str, torch.Tensor]:
        """Verify and open a secure package (dict or envelope bytes); typed errors on tamper, replay, expiry, wrong key."""
        with self._sec_lock:
            self._counters["authentication_checks"] += 1
        try:
            if isinstance(package, bytes | bytearray | memoryview):
                opened = self._sealer.open(bytes(package))
            else:
                opened = self._sealer.open_envelope(Envelope.from_dict(package))
            if opened is None:
                raise MalformedMessage(
                    "a chunk of a larger update is not a complete secure package"
                )
            update = opened.payload.get(_PAYLOAD_KEY)
            if not isinstance(update, dict) or not all(
                isinstance(t, torch.Tensor) for t in update.values()
            ):
                raise MalformedMessage("secure package does not carry a model update")
        except (SecurityError, WireError) as exc:
            with self._sec_lock:
                self._counters["security_violations"] += 1
                self._violations_by_reason[exc.reason] = (
                    self._violations_by_reason.get(exc.reason, 0) + 1
                )
            raise
        with self._sec_lock:
            self._counters["decrypted_messages"] += 1
        return update

    def send_model_update(
        self, datasite_id: str, model_update: Mapping[str, torch.Tensor], round_num: int = 0
    ) -> dict[str, Any]:
        """Seal the update and deliver it: through ``transport`` when one was given, else over the datasite's PySyft connection."""
        started = time.time()
        package = self.encrypt_model_update(
            model_update, datasite_id=datasite_id, round_num=round_num
        )
        body = Envelope.from_dict(package)
        result: dict[str, Any] = {
            "success": False,
            "datasite_id": datasite_id,
            "round_num": round_num,
            "timestamp": package["timestamp"],
            "checksum": package["checksum"],
            "size_bytes": len(body.encrypted_data),
            "delivered_via": None,
        }
        try:
            if self._transport is not None:
                from federation.wire.envelope import encode_envelope

                self._transport(datasite_id, encode_envelope(body))
                result["success"], result["delivered_via"] = True, "transport"
            elif self.is_connected(datasite_id):
                result["success"] = bool(self.send_model(dict(model_update), datasite_id))
                result["delivered_via"] = "pysyft"
            else:
                result["error"] = (
                    f"datasite {datasite_id!r} is not connected and no transport is set"
                )
        except PdmFedError as exc:
            result["error"] = str(exc)
        result["duration_s"] = time.time() - started
        return result

    # --- differential privacy -----------------------------------------------------------
    def _ledger(self, key: str) -> PrivacyAccountant:
        if key not in self._local_ledgers:
            self._local_ledgers[key] = PrivacyAccountant(
                self.noise_multiplier,
                self.sampling_rate,
                self.delta,
                self.max_epsilon,
                self.accounting,
            )
        return self._local_ledgers[key]

    def apply_differential_privacy(
        self,
        model_update: Mapping[str, torch.Tensor],
        sensitivity: float = 1.0,
        *,
        datasite_id: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Clip to L2 ``sensitivity`` (across all tensors) then add N(0, (noise_multiplier x sensitivity)^2).

        Spends one round of ``datasite_id``'s privacy ledger first and raises
        PrivacyBudgetExceeded (nothing noised, nothing spent) when that would pass max_epsilon.
        With a reference model, the update's difference from it is what gets clipped.
        A disabled DP returns an unchanged copy.
        """
        if not self.differential_privacy_enabled:
            return {k: v.detach().clone() for k, v in model_update.items()}
        ref = self._reference_for(model_update)
        delta = self._minus(model_update, ref)
        with self._sec_lock:
            noisy = privatize_update(delta, sensitivity, self.noise_multiplier, self._generator)
            # spent only once the update could be privatised; a refusal releases nothing
            self._ledger(datasite_id or _LOCAL_LEDGER).spend_round()
            self._counters["dp_noise_applications"] += 1
        self._observe_dp()
        return self._plus(noisy, ref)

    def privacy_spent(self) -> dict[str, Any]:
        """(epsilon, delta) per ledger: the campaign's (central) and each datasite's (local)."""
        with self._sec_lock:
            return {
                "central": self._central_ledger.to_dict(),
                "local": {k: v.to_dict() for k, v in self._local_ledgers.items()},
            }

    def _epsilon_spent(self) -> float:
        eps = [self._central_ledger.epsilon] + [a.epsilon for a in self._local_ledgers.values()]
        return max(eps)

    # --- Byzantine tolerance ----------------------------------------------------------
    def set_reference_model(self, model_parameters: Mapping[str, torch.Tensor] | None) -> None:
        """The global model the current round's updates started from (None = updates are deltas)."""
        self.reference_model = (
            None
            if model_parameters is None
            else {k: v.detach().clone() for k, v in model_parameters.items()}
        )

    def send_model(self, model_parameters: Mapping[str, torch.Tensor], datasite_id: str) -> bool:
        """The parent's send_model; also remembers the model as this round's reference."""
        self.set_reference_model(model_parameters)
        return super().send_model(model_parameters, datasite_id)

    def _reference_for(self, update: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        ref = self.reference_model
        if ref is None or set(ref) != set(update):
            return None
        if any(ref[k].shape != update[k].shape for k in update):
            return None
        return ref

    @staticmethod
    def _minus(update: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor] | None):
        if ref is None:
            return dict(update)
        return {k: (v - ref[k]) if v.is_floating_point() else v for k, v in update.items()}

    @staticmethod
    def _plus(update: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor] | None):
        if ref is None:
            return dict(update)
        return {
            k: (v + ref[k]).to(ref[k].dtype) if v.is_floating_point() else v
            for k, v in update.items()
        }

    def _policy(self) -> ScreeningPolicy:
        return ScreeningPolicy(
            self.byzantine_fault_tolerance_enabled,
            self.bft_threshold,
            self.min_clients,
            self.reputation_threshold,
        )

    def detect_byzantine_clients(
        self, updates: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Screen the seed's update dicts; return (the updates not flagged, the flagged datasite ids).

        Median/MAD z-scores and IQR fences on norms (two-sided, gated by a ratio-to-median
        test), and cosine to the coordinate-wise median; every verdict also updates reputation.
        Below ``min_clients`` only non-finite updates are flagged.
        """
        kept, flagged, _ = self._detect(_as_updates(updates))
        return kept, flagged

    def _detect(
        self, items: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[str], Verdicts | None]:
        """``detect_byzantine_clients`` on checked items, with the verdicts (None: BFT is off)."""
        if not self.byzantine_fault_tolerance_enabled or not items:
            return items, [], None
        ids = [str(u["datasite_id"]) for u in items]
        model_updates = [u["model_update"] for u in items]
        ref = self._reference_for(model_updates[0])
        with self._sec_lock:
            verdicts = judge(model_updates, ids, self._policy(), self.reputation, reference=ref)
            self.last_verdicts = verdicts
            for v in verdicts:
                norm = v.scores.get("norm")
                if norm is not None and math.isfinite(norm):
                    self._norm_history.setdefault(v.client_id, []).append(norm)
            flagged = verdicts.flagged_ids
            self._counters["byzantine_attacks_detected"] += len(flagged)
        self._observe_reputation(flagged)
        kept = [u for u, cid in zip(items, ids, strict=True) if cid not in flagged]
        return kept, flagged, verdicts

    def apply_reputation_filtering(
        self, updates: Sequence[Mapping[str, Any]], reputation_threshold: float = 0.3
    ) -> list[dict[str, Any]]:
        """Keep the updates whose datasite's reputation is at least ``reputation_threshold``."""
        items = _as_updates(updates)
        policy = ScreeningPolicy(True, self.bft_threshold, self.min_clients, reputation_threshold)
        ids = [str(u["datasite_id"]) for u in items]
        kept = [items[i] for i in trusted(ids, None, policy, self.reputation).accepted]
        with self._sec_lock:
            self._counters["clients_filtered"] += len(items) - len(kept)
        return kept

    # --- aggregation --------------------------------------------------------------------
    def aggregate_secure_updates(
        self, updates: Sequence[Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Aggregate the seed's update dicts.

        Local DP mode (and DP off): the configured robust rule (default trimmed mean with the
        seed's weighted-mean fallback below 5 clients), weighted by num_samples x reputation
        where the rule uses weights. Central DP mode: the same rule inside ``CentralDP`` (clip each to
        ``clip_norm``, aggregate unweighted, noise calibrated to the rule's own sensitivity), one
        round spent on the campaign ledger first.

        It refuses as the pipeline does (``NoQuorumError``, counted like
        ``secure_aggregation_with_bft``'s) unless the quorum is met: with BFT on, the updates must
        be ones the last ``detect_byzantine_clients`` kept from a cohort of at least
        ``min_clients`` judged updates, and at least ``quorum`` of them.
        """
        items = _as_updates(updates)
        if not items:
            raise RobustnessError("no updates to aggregate")
        ids = [str(u["datasite_id"]) for u in items]
        self._refuse_without_quorum(self._quorum_of(ids))
        model_updates = [u["model_update"] for u in items]
        ref = self._reference_for(model_updates[0])
        deltas = [self._minus(m, ref) for m in model_updates]
        everyone = ScreeningPolicy(True, self.bft_threshold, self.min_clients, 0.0)
        with self._sec_lock:
            weights = trusted(
                ids,
                None,
                everyone,
                self.reputation,
                [float(u.get("num_samples") or 1) for u in items],
            ).weights
        if sum(weights) <= 0:
            weights = None
        if self.differential_privacy_enabled and self.dp_mode == "central":
            rule = CentralDP(
                self._aggregator,
                self.clip_norm,
                self.noise_multiplier,
                accountant=self._central_ledger,
                generator=self._generator,
            )
            with self._sec_lock:
                agg = rule.aggregate(deltas, weights)
                self._counters["dp_noise_applications"] += 1
            self._observe_dp()
        else:
            agg = self._aggregator.aggregate(deltas, weights)
        with self._sec_lock:
            self._counters["aggregations"] += 1
        if self._metrics is not None:
            self._metrics.updates_aggregated.labels(campaign=self.campaign_id).inc(len(items))
        return self._plus(agg, ref)

    def _trimmed_mean_aggregation(
        self, param_tensors: Sequence[torch.Tensor], trim_ratio: float = 0.1
    ) -> torch.Tensor:
        """Coordinate-wise trimmed mean of one parameter across clients (ceil(n x trim_ratio) cut from each end)."""
        if not param_tensors:
            raise RobustnessError("no tensors to aggregate")
        try:
            stacked = torch.stack([t.detach() for t in param_tensors])
        except (RuntimeError, TypeError) as exc:
            raise RobustnessError(f"parameter tensors do not stack: {exc}") from exc
        dtype = stacked.dtype
        work = stacked if stacked.is_floating_point() else stacked.double()
        rule = TrimmedMean(trim_ratio, min_clients=1)
        out = rule.aggregate([{"p": row} for row in work])["p"]
        return out if stacked.is_floating_point() else out.round().to(dtype)

    def secure_aggregation_with_bft(
        self, client_updates: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The secure manager's flow: detect Byzantine clients, filter by reputation, aggregate robustly.

        The services' quorum (``federation.robust.pipeline.quorum``): with BFT on, at least
        ``min_clients`` updates must be screened (a smaller cohort cannot be judged, so none of
        it is accepted) and at least ``quorum`` accepted. Otherwise nothing is aggregated and
        ``NoQuorumError`` (a ``RobustnessError``, reason ``no_quorum``) is raised, counted in
        ``no_quorum_refusals`` and ``pdmfed_rounds_failed_total{reason="no_quorum"}``.
        """
        items = _as_updates(client_updates)
        filtered_updates, byzantine_clients, verdicts = self._detect(items)
        judged = verdicts is None or verdicts.screened
        trusted_updates = (
            self.apply_reputation_filtering(
                updates=filtered_updates, reputation_threshold=self.reputation_threshold
            )
            if judged
            else []
        )
        screened = len(items) if judged else len(byzantine_clients)
        self._refuse_without_quorum(
            quorum(len(trusted_updates), screened, self.quorum, self._policy())
        )
        return self.aggregate_secure_updates(trusted_updates), byzantine_clients

    def _quorum_of(self, ids: Sequence[str]) -> Quorum:
        """The quorum of updates handed to ``aggregate_secure_updates`` (the seed's step-by-step
        flow): with BFT on only updates the last screening judged and kept count as accepted,
        and that screening must have judged at least ``min_clients`` updates."""
        policy = self._policy()
        if not policy.enabled:
            return quorum(len(ids), len(ids), self.quorum, policy)
        v = self.last_verdicts
        if v is None:
            return quorum(0, 0, self.quorum, policy)
        screened = len(v) if v.screened else len(v.flagged_ids)
        kept = set(v.kept_ids) if v.screened else set()
        unjudged = [c for c in ids if c not in kept]
        if unjudged and v.screened:
            raise RobustnessError(
                f"updates from {', '.join(unjudged)} were not kept by the last screening; "
                "screen them with detect_byzantine_clients first"
            )
        return quorum(len(ids) - len(unjudged), screened, self.quorum, policy)

    def _refuse_without_quorum(self, q: Quorum) -> None:
        """Count and raise ``NoQuorumError`` unless ``q`` is met."""
        if q.met:
            return
        with self._sec_lock:
            self._counters["no_quorum_refusals"] += 1
        if self._metrics is not None:
            self._metrics.rounds_failed.labels(reason="no_quorum").inc()
        q.check()

    # --- reporting ------------------------------------------------------------------------
    def get_security_metrics(self) -> dict[str, Any]:
        """The seed's security metrics, plus epsilon spent and rejection reasons."""
        dp, bft = self.differential_privacy_enabled, self.byzantine_fault_tolerance_enabled
        level = "high" if dp and bft else "medium" if dp or bft else "basic"
        with self._sec_lock:
            counters = dict(self._counters)
            scores = self.reputation.scores()
            eps = self._epsilon_spent()
            counters.update(
                {
                    "epsilon_spent": eps,
                    "delta": self.delta,
                    "max_epsilon": self.max_epsilon,
                    "dp_mode": self.dp_mode,
                    "dp_rounds": max(
                        [self._central_ledger.rounds]
                        + [a.rounds for a in self._local_ledgers.values()]
                    ),
                    "violations_by_reason": dict(self._violations_by_reason),
                }
            )
        values = list(scores.values())
        return {
            "security_level": level,
            "encryption_enabled": True,
            "differential_privacy_enabled": dp,
            "byzantine_fault_tolerance_enabled": bft,
            "noise_multiplier": self.noise_multiplier,
            "security_metrics": counters,
            "client_reputation_summary": {
                "num_clients": len(values),
                "avg_reputation": sum(values) / len(values) if values else 1.0,
                "min_reputation": min(values) if values else 1.0,
                "low_reputation_clients": sorted(
                    c for c, s in scores.items() if s < self.reputation_threshold
                ),
            },
        }

    def get_client_reputation_report(self) -> dict[str, Any]:
        """The seed's reputation report: scores, per-client norm history, detection totals."""
        with self._sec_lock:
            history = {}
            for cid, norms in self._norm_history.items():
                t = torch.tensor(norms, dtype=torch.float64)
                history[cid] = {
                    "num_updates": len(norms),
                    "avg_norm": float(t.mean()),
                    "std_norm": float(t.std()) if len(norms) > 1 else 0.0,
                    "latest_norm": norms[-1],
                }
            return {
                "client_reputations": self.reputation.scores(),
                "update_history_summary": history,
                "byzantine_detection_summary": {
                    "total_attacks_detected": self._counters["byzantine_attacks_detected"],
                    "total_clients_filtered": self._counters["clients_filtered"],
                    "reputation_updates": self.reputation.updates,
                },
            }

    # --- persistence --------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """Reputation, privacy ledgers and counters as plain data (what a service persists)."""
        with self._sec_lock:
            return {
                "reputation": self.reputation.to_dict(),
                "privacy": self.privacy_spent(),
                "counters": dict(self._counters),
                "norm_history": {k: list(v) for k, v in self._norm_history.items()},
            }

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Restore what ``export_state`` wrote (e.g. after a restart)."""
        try:
            book = ReputationBook.from_dict(state["reputation"])
            central = PrivacyAccountant.from_dict(state["privacy"]["central"])
            local = {
                k: PrivacyAccountant.from_dict(v) for k, v in state["privacy"]["local"].items()
            }
            counters = {k: int(state["counters"].get(k, 0)) for k in self._counters}
            norms = {
                str(k): [float(x) for x in v] for k, v in state.get("norm_history", {}).items()
            }
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise PrivacyError(f"corrupt secure-manager state: {exc}") from exc
        with self._sec_lock:
            self.reputation, self._central_ledger, self._local_ledgers = book, central, local
            self._counters, self._norm_history = counters, norms

    # --- metrics ---------------------------------------------------------------------------
    def _observe_dp(self) -> None:
        if self._metrics is None:
            return
        self._metrics.dp_noise_applications.labels(campaign=self.campaign_id).inc()
        eps = self._epsilon_spent()
        if math.isfinite(eps):
            self._metrics.dp_epsilon.labels(campaign=self.campaign_id, level="client").set(eps)

    def _observe_reputation(self, flagged: Sequence[str]) -> None:
        if self._metrics is None:
            return
        for cid in flagged:
            self._metrics.byzantine_detected.labels(
                campaign=self.campaign_id, datasite_id=cid
            ).inc()
        self._metrics.set_reputations(self.reputation.scores(), self.campaign_id)
