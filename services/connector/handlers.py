"""connector: owns the PySyft sessions; turns train.request into training at the datasite."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import torch
from federation.campaign import CampaignConfig
from federation.datasite_registry import DatasiteRegistry, UnknownDatasite
from federation.errors import DatasiteConnectionError, MalformedMessage
from federation.runtime.service import Service
from federation.runtime.store import Transaction
from federation.wire.codec import encode_payload_parts
from federation.wire.messages import (
    CampaignAccepted,
    CampaignCompleted,
    CampaignRejected,
    CampaignStart,
    DatasiteStatus,
    DpSpend,
    RoundOpen,
    StatsRequest,
    StatusDetail,
    TrainingMetrics,
    TrainRequest,
    UpdateRaw,
)

__all__ = ["ConnectorLogic", "build_service", "training_metrics"]

log = logging.getLogger(__name__)


class ConnectorLogic:
    """Sessions to the datasites named by running campaigns, and the training round trip.

    A message names a datasite by id only; the URL, the account and its password come from
    ``registry`` (the connector's configuration), so no campaign can point the connector, or
    the credentials it holds, anywhere else.
    """

    #: How long a train.request waits for its round.open's model to be committed here.
    model_wait_s: float = 60.0
    #: Model versions kept decoded in memory: every datasite of a round trains from the same
    #: one, so it is read from the store once per round, not once per datasite.
    models_in_memory: int = 2
    #: Seconds between session checks (probe the logged-in datasites, log in to the others).
    session_check_s: float = 5.0

    def __init__(
        self,
        comm_manager: Any,
        registry: DatasiteRegistry,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.comm = comm_manager
        self.registry = registry
        self.store: Any = None
        #: datasite id -> (url, email) of the session logged in now: a registry change means a
        #: new login, never a session to the old address.
        self._logins: dict[str, tuple[str, str]] = {}
        self._on_refusal = on_refusal or (lambda reason: None)
        self._locks: dict[str, asyncio.Lock] = {}
        self._models: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._models_lock = threading.Lock()
        #: campaign id -> the datasites it names (the campaigns not completed yet).
        self._campaigns: dict[str, tuple[str, ...]] = {}
        self._campaigns_lock = threading.Lock()
        self._exported: set[str] = set()
        self._login_errors: dict[str, str] = {}
        self._login_locks: dict[str, threading.Lock] = {}

    def remember_datasites(self, cfg: CampaignConfig) -> list[str]:
        """Keep a campaign's datasites open; the ids the registry does not hold are refused
        (logged, counted, never contacted) and returned."""
        known, unknown = [], []
        for ds in cfg.cohort:
            try:
                self.registry.get(ds)
                known.append(ds)
            except UnknownDatasite:
                unknown.append(ds)
        if unknown:
            self._on_refusal(UnknownDatasite.reason)
            log.warning(
                "campaign %s names datasites the connector's registry does not hold: %s;"
                " they will not be contacted",
                cfg.campaign_id,
                ", ".join(unknown),
            )
        with self._campaigns_lock:
            self._campaigns[cfg.campaign_id] = tuple(known)
        return unknown

    def forget_campaign(self, campaign_id: str) -> None:
        """A completed campaign: its sessions close unless another campaign names them."""
        with self._campaigns_lock:
            self._campaigns.pop(campaign_id, None)

    def check_sessions(self) -> dict[str, tuple[int, int]]:
        """Probe or open every running campaign's sessions (blocking); {campaign: (connected,
        named)}. A datasite training right now is judged by its session, not disturbed."""
        with self._campaigns_lock:  # handlers add and drop campaigns meanwhile
            campaigns = dict(self._campaigns)
            named = {ds for dss in campaigns.values() for ds in dss}
            stale = set(self._logins) - named  # only completed campaigns named them
            for ds in stale:
                del self._logins[ds]
        for ds in stale:
            self.comm.disconnect_from_datasite(ds)
        up: set[str] = set()
        for ds in sorted(named):
            lock = self._locks.get(ds)
            if lock is not None and lock.locked():
                connected = self.comm.is_connected(ds)
            elif self.comm.is_connected(ds) and not self._moved(ds):
                connected = self.comm.check_connection(ds)
            else:  # not logged in, or its registry entry changed: log in where it says now
                connected = self._try_login(ds)
            if connected:
                up.add(ds)
        return {cid: (len(up.intersection(dss)), len(dss)) for cid, dss in campaigns.items()}

    def _moved(self, datasite_id: str) -> bool:
        """Whether the registry now gives another URL or account than the session's."""
        try:
            entry = self.registry.get(datasite_id)
        except UnknownDatasite:
            return True
        return self._logins.get(datasite_id) != (entry.url, entry.email)

    def _try_login(self, datasite_id: str) -> bool:
        try:
            url = self.registry.get(datasite_id).url
        except UnknownDatasite:  # left the registry since the campaign started
            return False
        if not self.comm.datasite_answers(url):
            return False
        try:
            self._ensure_connected(datasite_id)
        except Exception as exc:  # told once per distinct reason; trainings report it too
            if self._login_errors.get(datasite_id) != str(exc):
                log.warning("session check: %s", exc)
            self._login_errors[datasite_id] = str(exc)
            return False
        self._login_errors.pop(datasite_id, None)
        return True

    def export_sessions(self, metrics: Any, counts: dict[str, tuple[int, int]]) -> None:
        """Set pdmfed_datasites_connected/expected per campaign; drop completed campaigns'."""
        for cid, (connected, named) in counts.items():
            metrics.set_connections(cid, connected, named)
        for cid in self._exported - set(counts):
            metrics.forget_connections(cid)
        self._exported = set(counts)

    async def watch_sessions(self, metrics: Any) -> None:
        """Keep the sessions of running campaigns open and their gauges true, until cancelled."""
        while True:
            try:
                counts = await asyncio.to_thread(self.check_sessions)
                if metrics is not None:
                    self.export_sessions(metrics, counts)
            except Exception:  # a failed check is retried; the connector keeps serving
                log.exception("session check failed")
            await asyncio.sleep(self.session_check_s)

    def load_campaigns(self, store: Any) -> None:
        """After a restart: keep the datasites of the campaigns this connector already saw."""
        self.store = store
        with store.transaction() as tx:
            for key in tx.keys("campaign/"):
                self.remember_datasites(CampaignConfig.from_payload(tx.get(key)))

    def _ensure_connected(self, datasite_id: str) -> None:
        with self._login_lock(datasite_id):  # the session check and a training: one login
            self._connect(datasite_id)

    def _login_lock(self, datasite_id: str) -> threading.Lock:
        with self._campaigns_lock:
            return self._login_locks.setdefault(datasite_id, threading.Lock())

    def _connect(self, datasite_id: str) -> None:
        try:
            entry = self.registry.get(datasite_id)
        except UnknownDatasite:
            self._on_refusal(UnknownDatasite.reason)
            raise
        target = (entry.url, entry.email)
        current = self._logins.get(datasite_id)
        if current == target and self.comm.is_connected(datasite_id):
            return
        if current is not None and current != target:
            log.info("datasite %s moved in the registry: logging in at %s", datasite_id, entry.url)
            self.comm.disconnect_from_datasite(datasite_id)
            self._logins.pop(datasite_id, None)
        ok = self.comm.connect_to_datasite(
            datasite_url=entry.url,
            credentials={
                "email": entry.email,
                "password": entry.password(),
                "datasite_id": datasite_id,
            },
        )
        if not ok:
            raise DatasiteConnectionError(
                f"cannot connect to datasite {datasite_id} at {entry.url}"
            )
        self._logins[datasite_id] = target

    def global_model(self, request: dict) -> dict[str, torch.Tensor]:
        """The round's model: the version kept from round.open (waits for it)."""
        if self.store is None:
            raise RuntimeError("train.request without a model and no store to find it in")
        key = model_key(request["campaign_id"], int(request["model_version"]))
        deadline = time.monotonic() + self.model_wait_s
        while True:  # round.open is ahead in the queue but may still be committing in parallel
            with self._models_lock:  # one reader loads a version; the others reuse it
                model = self._models.get(key)
                if model is None:
                    model = self.store.read(key)
                    if model is not None and isinstance(model.get("global_model"), dict):
                        model = model["global_model"]  # as stored (bare tensors: older stores)
                    if model is not None:
                        self._models[key] = model
                        while len(self._models) > self.models_in_memory:
                            self._models.popitem(last=False)
            if model is not None:
                return dict(model)  # sessions encode the tensors and never modify them
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"model version {request['model_version']} never arrived (round.open)"
                )
            time.sleep(0.05)

    def train(self, request: dict) -> dict:
        """Send the global model and train at the datasite (blocking; run in a thread)."""
        ds = request["datasite_id"]
        self._ensure_connected(ds)
        global_model = self.global_model(request)
        if not self.comm.send_model(global_model, ds):
            raise RuntimeError(f"sending the global model to {ds} failed")
        config = dict(request["training_config"])
        config["round_number"] = request["round_num"]
        config["campaign_id"] = request["campaign_id"]
        config["model_version"] = int(request["model_version"])  # the factory signs it too
        result = self.comm.request_training(config, ds)
        if not isinstance(result, dict) or result.get("error"):
            err = result.get("error") if isinstance(result, dict) else "no result"
            raise RuntimeError(f"training at {ds} failed: {err}")
        return result

    def stats(self, request: dict) -> dict:
        """Round 0: the statistics job on the datasite's raw partition (blocking; in a thread)."""
        ds = request["datasite_id"]
        self._ensure_connected(ds)
        result = self.comm.request_stats(self.stats_config(request["campaign_id"]), ds)
        if not isinstance(result, dict) or result.get("error"):
            err = result.get("error") if isinstance(result, dict) else "no result"
            raise RuntimeError(f"statistics at {ds} failed: {err}")
        return result

    async def _at_datasite(self, job: Any, ds: str, request: dict, what: str) -> dict:
        """Run a blocking datasite job outside the transaction, one at a time per datasite; a
        failure becomes data ({"ok": False, "error": ...}), never an exception."""
        async with self._locks.setdefault(ds, asyncio.Lock()):
            try:
                return {"ok": True, "result": await asyncio.to_thread(job, request)}
            except Exception as exc:  # the datasite's failure is reported, never fatal
                log.warning("%s at %s failed: %s", what, ds, exc)
                return {"ok": False, "error": str(exc)}

    def stats_config(self, campaign_id: str) -> dict:
        """The statistics job's config: the campaign, and its DP noise when the campaign asks it."""
        out: dict[str, Any] = {"campaign_id": campaign_id}
        if self.store is None:
            return out
        raw = self.store.read(f"campaign/{campaign_id}")
        if raw is None:  # never run without knowing whether the campaign wants noise (retried)
            raise RuntimeError(f"campaign {campaign_id}'s config has not reached the connector yet")
        sp = CampaignConfig.from_payload(raw).stats_privacy
        if sp.enabled:
            out["noise"] = sp.job_config()
        return out

    async def prepare_stats(self, msg: StatsRequest, envelope: Any) -> dict:
        """Run the statistics job outside the transaction; a failure becomes data."""
        return await self._at_datasite(self.stats, msg.datasite_id, msg.to_payload(), "statistics")

    async def prepare_train(self, msg: TrainRequest, envelope: Any) -> dict:
        """Run training outside the transaction; a failure becomes data, not an exception.

        With a claim store, the update is also sealed into it here, in parallel with the other
        datasites' and before the handler's transaction (``sealed``): the transaction then only
        queues its reference.
        """
        prepared = await self._at_datasite(
            self.train, msg.datasite_id, msg.to_payload(), "training"
        )
        claims = getattr(self.store, "claims", None)
        if not prepared["ok"] or claims is None:
            return prepared
        try:
            prepared["update"] = update = update_message(msg, prepared["result"], self)
        except MalformedMessage:
            return prepared  # the handler reports the failed training
        parts = encode_payload_parts(update.to_payload())
        if claims.applies(update.msg_type.value, parts.nbytes):  # on the store's sealing threads
            prepared["sealed"] = await asyncio.wrap_future(claims.deposit_later(
                update.msg_type.value, parts, datasite_id=msg.datasite_id,
                round_num=msg.round_num,
            ))  # fmt: skip
        return prepared


def model_key(campaign_id: str, version: int) -> str:
    """Store key of a global model version kept by the connector."""
    return f"model/{campaign_id}/{version:08d}"


def update_message(msg: TrainRequest, result: dict, logic: ConnectorLogic) -> UpdateRaw:
    """The update.raw of a datasite's training result (MalformedMessage for unusable metrics)."""
    return UpdateRaw(
        campaign_id=msg.campaign_id,
        round_num=msg.round_num,
        datasite_id=msg.datasite_id,
        model_version=msg.model_version,
        delta=_delta(result, logic, msg.to_payload()),
        num_samples=int(result.get("num_samples", 0)),
        metrics=training_metrics(result),
        factory_signature=result.get("factory_signature"),
        factory_key_id=result.get("factory_key_id"),
    )


def _delta(result: dict, logic: ConnectorLogic, request: dict) -> dict[str, torch.Tensor]:
    delta = result.get("delta")
    if delta is not None:
        return dict(delta)
    global_model = logic.global_model(request)  # kept in memory since training sent it
    update = result["model_update"]
    return {
        k: (update[k].to(torch.float32) - global_model[k].to(torch.float32))
        if update[k].is_floating_point()
        else update[k]
        for k in global_model
    }


def training_metrics(result: dict) -> TrainingMetrics:
    """The figures of a datasite's training result that update.raw carries (MalformedMessage
    when one is not a finite number)."""
    figures = {
        k: result[k]
        for k in ("loss", "rmse", "accuracy", "training_time")
        if result.get(k) is not None
    }
    dp = result.get("dp")
    if dp:
        if not isinstance(dp, dict):
            raise MalformedMessage("field dp must be a map")
        figures["dp"] = {f.name: dp[f.name] for f in fields(DpSpend) if dp.get(f.name) is not None}
    return TrainingMetrics.from_payload(figures)


def build_service(logic: ConnectorLogic, queue: str = "pdmfed.connector") -> Service:
    """The connector service around its session logic."""

    def on_campaign_start(tx: Transaction, msg: CampaignStart, envelope: Any) -> None:
        """Keep the campaign's config (the first one: a duplicate start changes nothing); its
        datasites are contacted only once trainer-dispatch accepted it."""
        cfg = CampaignConfig.from_payload(msg.config)
        if tx.get(f"campaign/{cfg.campaign_id}") is None:
            tx.put(f"campaign/{cfg.campaign_id}", cfg.to_payload())

    def on_campaign_accepted(tx: Transaction, msg: CampaignAccepted, envelope: Any) -> None:
        """Keep the accepted campaign's datasites open (those its registry holds)."""
        stored = tx.get(f"campaign/{msg.campaign_id}")
        if stored is None:
            log.warning(
                "campaign %s accepted, but its campaign.start never reached the connector",
                msg.campaign_id,
            )
            return
        tx.put(f"accepted/{msg.campaign_id}", True)
        logic.remember_datasites(CampaignConfig.from_payload(stored))

    def on_campaign_rejected(tx: Transaction, msg: CampaignRejected, envelope: Any) -> None:
        """A refused campaign is forgotten; a duplicate's refusal leaves a running (accepted)
        campaign alone, and drops the config a duplicate start of a finished one left behind."""
        if tx.get(f"accepted/{msg.campaign_id}") is not None:
            return
        tx.delete(f"campaign/{msg.campaign_id}")
        logic.forget_campaign(msg.campaign_id)

    def on_campaign_completed(tx: Transaction, msg: CampaignCompleted, envelope: Any) -> None:
        """Drop the campaign's model versions and datasites; its sessions close at the next check."""
        cid = msg.campaign_id
        tx.delete(f"campaign/{cid}")
        tx.delete(f"accepted/{cid}")
        for key in tx.keys(f"model/{cid}/"):
            tx.delete(key)
        logic.forget_campaign(cid)

    def on_round_open(tx: Transaction, msg: RoundOpen, envelope: Any) -> None:
        cid, version = msg.campaign_id, msg.model_version
        # Sent by reference (PDMFED_CLAIM_MODELS): the body it came in is kept as its stored
        # form, not written again; else the tensors are stored.
        stored = {"global_model": msg.global_model}
        tx.put(model_key(cid, version), stored, kept=tx.keep_received(envelope, stored))
        for key in tx.keys(f"model/{cid}/"):
            if key < model_key(cid, version - 1):  # keep this version and the one before (retries)
                tx.delete(key)

    def on_train_request(tx: Transaction, msg: TrainRequest, envelope: Any, prepared: dict) -> None:
        cid, rnd, ds = msg.campaign_id, msg.round_num, msg.datasite_id
        attempt = msg.attempt
        key = f"done/{cid}/{rnd:06d}/{ds}/{attempt}"
        sealed = prepared.get("sealed")
        if tx.get(key) is not None:
            if sealed is not None:  # sealed for nothing: no message will name it
                tx.claims.discard([sealed])
            return  # this attempt was already answered
        detail = StatusDetail(campaign_id=cid, round_num=rnd, attempt=attempt)
        error = None if prepared["ok"] else prepared["error"]
        update = prepared.get("update")
        if error is None and update is None:
            try:
                update = update_message(msg, prepared["result"], logic)
            except MalformedMessage as exc:  # the datasite's answer, not ours: a failed training
                error = f"training at {ds} returned unusable metrics: {exc}"
        if error is not None:
            tx.emit(
                DatasiteStatus(
                    datasite_id=ds, status="failed", detail=replace(detail, error=error)
                ),
                datasite_id=ds,
                round_num=rnd,
            )
            tx.put(key, "failed")
            return
        tx.emit(update, datasite_id=ds, round_num=rnd, sealed=sealed)
        tx.emit(
            DatasiteStatus(datasite_id=ds, status="trained", detail=detail),
            datasite_id=ds,
            round_num=rnd,
        )
        tx.put(key, "trained")

    def on_stats_request(tx: Transaction, msg: StatsRequest, envelope: Any, prepared: dict) -> None:
        cid, ds, attempt = msg.campaign_id, msg.datasite_id, msg.attempt
        key = f"done/{cid}/{0:06d}/{ds}/{attempt}"
        if tx.get(key) is not None:
            return  # this attempt was already answered
        if not prepared["ok"]:
            detail = StatusDetail(
                campaign_id=cid, round_num=0, attempt=attempt, error=prepared["error"]
            )
            tx.emit(
                DatasiteStatus(datasite_id=ds, status="failed", detail=detail),
                datasite_id=ds,
                round_num=0,
            )
            tx.put(key, "failed")
            return
        result = prepared["result"]
        tx.emit(
            "stats.raw",
            {
                "campaign_id": cid,
                "round_num": 0,
                "datasite_id": ds,
                "attempt": attempt,
                "stats": result.get("stats") or {},
                "stats_signature": result.get("stats_signature"),
                "factory_key_id": result.get("factory_key_id"),
            },
            datasite_id=ds,
            round_num=0,
        )
        tx.put(key, "stats")

    return Service(
        name="connector",
        queue=queue,
        handlers={
            CampaignStart: on_campaign_start,
            CampaignAccepted: on_campaign_accepted,
            CampaignRejected: on_campaign_rejected,
            RoundOpen: on_round_open,
            TrainRequest: on_train_request,
            CampaignCompleted: on_campaign_completed,
            StatsRequest: on_stats_request,
        },
        prepare={TrainRequest: logic.prepare_train, StatsRequest: logic.prepare_stats},
        background=logic.watch_sessions,
    )
