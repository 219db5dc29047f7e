"""PySyftCommunicationManager: the orchestrator's sessions with factory datasites."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import requests
import torch

from federation.errors import (
    ApprovalPendingError,
    DatasiteConnectionError,
    DatasiteError,
    MalformedMessage,
    PdmFedError,
    TrainingError,
)
from federation.wire.codec import (
    decode_state_dict,
    encode_payload,
    encode_state_dict,
    tensor_digest,
)

__all__ = ["PySyftCommunicationManager"]

log = logging.getLogger(__name__)

CONNECTED, DISCONNECTED, ERROR = "connected", "disconnected", "error"


@dataclass
class _Session:
    """What the manager knows about one datasite."""

    datasite_id: str
    url: str
    email: str
    password: str = field(repr=False)
    status: str = DISCONNECTED
    client: Any = field(default=None, repr=False)
    capabilities: dict[str, Any] = field(default_factory=dict)
    connection_time: str | None = None
    last_error: str | None = None
    assets: dict[str, Any] = field(default_factory=dict, repr=False)
    model_ptr: Any = field(default=None, repr=False)
    model_digest: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)


def _call_with_timeout(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run a blocking PySyft call in a daemon thread; TimeoutError if it takes too long."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"pdmfed-syft-{what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"{what} took longer than {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _inputs_at(client: Any, inputs: Mapping[str, Any]) -> dict[Any, dict[str, Any]]:
    """A code request's inputs keyed as PySyft's input policy keys them, on the session's own
    datasite. PySyft's lookup (``partition_by_server``) would iterate its process-wide API
    registry, asking every datasite this process ever logged into, one HTTP call per input
    each: one gone dark stalled every other datasite's requests, and a login in another thread
    meanwhile failed the request (``OrderedDict mutated during iteration``)."""
    from syft.client.api import ServerIdentity
    from syft.service.dataset.dataset import Asset

    ids = {name: v.action_id if isinstance(v, Asset) else v.id for name, v in inputs.items()}
    return {ServerIdentity.from_api(client.api): ids}


def _syft_ok(result: Any, what: str) -> Any:
    from syft.service.response import SyftError

    if isinstance(result, SyftError):
        raise DatasiteError(f"{what}: {result.message}")
    return result


def _check_data_scientist(client: Any, datasite_id: str) -> None:
    """DatasiteError unless the logged-in account is exactly a data scientist."""
    from syft.service.user.user_roles import ServiceRole

    role = _syft_ok(client.account, "account").role
    if role != ServiceRole.DATA_SCIENTIST:
        raise DatasiteError(
            f"the credentials for {datasite_id} are a datasite {getattr(role, 'name', role)}'s: "
            "the connector logs in only as the factory's data scientist account"
        )


def _split_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise DatasiteConnectionError(f"datasite url {url!r} is not http(s)://host[:port]")
    return url.rstrip("/")


class PySyftCommunicationManager:
    """Connect to factory datasites, send the global model, run approved training, collect results.

    Failures at a datasite are results (``False`` or ``{'error': ...}``), never exceptions;
    invalid arguments from the caller raise typed errors from ``federation.errors``.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 30.0,
        request_timeout_s: float = 30.0,
        approval_timeout_s: float = 30.0,
        training_timeout_s: float = 600.0,
        poll_interval_s: float = 0.2,
        factory_trust: Any = None,
        training_job: Callable | None = None,
        require_data_scientist: bool = False,
        **kwargs: Any,
    ) -> None:
        self.connect_timeout_s = float(connect_timeout_s)
        self.request_timeout_s = float(request_timeout_s)
        self.approval_timeout_s = float(approval_timeout_s)
        self.training_timeout_s = float(training_timeout_s)
        self.poll_interval_s = float(poll_interval_s)
        #: TrustStore / {datasite_id: public key}: verify factory signatures on every result.
        self.factory_trust = factory_trust
        #: Refuse a login whose account is more than a data scientist (the connector's rule:
        #: a factory's admin credentials never leave the factory).
        self.require_data_scientist = bool(require_data_scientist)
        #: A fixed job for every request (tests); None: the shipped job for the built-in
        #: models, or the job naming the config's own model (``_job_for``).
        self.training_job = training_job
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.RLock()
        # subclasses (the secure manager) take their own keyword arguments; the rest is ignored
        self._extra_options = dict(kwargs)

    # ------------------------------------------------------------------ connection management
    def connect_to_datasite(self, datasite_url: str, credentials: Mapping[str, Any]) -> bool:
        """sy.login to a datasite and discover its capabilities; False (status set) on failure."""
        if not isinstance(credentials, Mapping):
            raise DatasiteConnectionError("credentials must be a mapping with email and password")
        email, password = credentials.get("email"), credentials.get("password")
        if not isinstance(email, str) or not email or not isinstance(password, str) or not password:
            raise DatasiteConnectionError("credentials need a non-empty 'email' and 'password'")
        url = _split_url(str(datasite_url))
        datasite_id = credentials.get("datasite_id") or urlparse(url).netloc
        with self._lock:
            session = self._sessions.get(datasite_id)
            if session is None or (session.url, session.email) != (url, email):
                session = _Session(datasite_id, url, email, password)
                self._sessions[datasite_id] = session
            session.password = password
        return self._connect(session)

    def reconnect(self, datasite_id: str) -> bool:
        """Log in again with the credentials of an earlier connect_to_datasite."""
        session = self._sessions.get(datasite_id)
        return False if session is None else self._connect(session)

    def _login(self, session: _Session) -> Any:
        import syft as sy

        return sy.login(
            url=session.url, email=session.email, password=session.password, cache=False
        )

    def _connect(self, session: _Session) -> bool:
        # The first `import syft` of a process takes from seconds to a minute on a busy machine
        # (a container on two shared cores): it must not count against the login's timeout.
        import syft  # noqa: F401

        with session.lock:
            try:
                client = _call_with_timeout(
                    lambda: _syft_ok(self._login(session), "login"),
                    self.connect_timeout_s,
                    "login",
                )
                if self.require_data_scientist:
                    _call_with_timeout(
                        lambda: _check_data_scientist(client, session.datasite_id),
                        self.request_timeout_s,
                        "role check",
                    )
                caps, assets = _call_with_timeout(
                    lambda: self._discover(client), self.request_timeout_s, "discovery"
                )
            except Exception as exc:
                self._fail(session, f"connect failed: {exc}")
                return False
            session.client, session.capabilities, session.assets = client, caps, assets
            session.status, session.last_error = CONNECTED, None
            session.connection_time = datetime.now().isoformat(timespec="seconds")
            session.model_ptr = session.model_digest = None
            log.info("connected to %s at %s", session.datasite_id, session.url)
            return True

    def _discover(self, client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Capabilities as the datasite itself reports them: metadata, datasets, its own card."""
        from federation.datasite.partition import CAPABILITIES, DATASET_NAME, FEATURES, LABELS

        md = client.metadata
        datasets, assets, card = [], {}, {}
        for ds in client.datasets:
            entries = [{"name": a.name, "shape": list(a.shape or [])} for a in ds.assets]
            datasets.append({"name": ds.name, "assets": entries})
            if ds.name == DATASET_NAME:
                assets = {a.name: a for a in ds.assets if a.name in (FEATURES, LABELS)}
                if CAPABILITIES in [a.name for a in ds.assets]:
                    mock = ds.assets[CAPABILITIES].mock
                    card = dict(mock) if isinstance(mock, Mapping) else {}
        caps: dict[str, Any] = {
            "supported_models": [],
            "max_clients": None,
            "privacy_features": [],
            "data_types": [],
            "compute_resources": "unknown",
        }
        caps.update(card)
        caps.update(
            {
                "syft_version": getattr(md, "syft_version", None),
                "datasite_name": getattr(md, "name", None),
                "server_side_type": str(getattr(md, "server_side_type", "")),
                "datasets": datasets,
            }
        )
        if FEATURES in assets:
            shape = list(assets[FEATURES].shape or [])
            caps["num_samples"] = int(shape[0]) if shape else 0
        return caps, assets

    @staticmethod
    def datasite_answers(url: str, timeout_s: float = 2.0) -> bool:
        """Whether the datasite at ``url`` answers its metadata endpoint right now."""
        try:
            r = requests.get(f"{_split_url(url)}/api/v2/metadata", timeout=timeout_s)
            return r.status_code == 200
        except (requests.RequestException, DatasiteConnectionError):
            return False

    def _probe(self, session: _Session) -> bool:
        return self.datasite_answers(session.url)

    def check_connection(self, datasite_id: str) -> bool:
        """Whether the datasite's session is logged in and the datasite answers right now; a
        logged-in session whose datasite no longer answers is marked disconnected (the next
        use logs in again)."""
        session = self._sessions.get(datasite_id)
        if session is None or session.status != CONNECTED:
            return False
        if self._probe(session) or self._probe(session):  # one lost answer is not a disconnect
            return True
        with session.lock:
            if session.status == CONNECTED:
                session.status, session.client = DISCONNECTED, None
                session.last_error = "the datasite stopped answering"
                log.warning("%s: the datasite stopped answering (status disconnected)", datasite_id)
        return False

    def _fail(self, session: _Session, message: str, *, timed_out: bool = False) -> None:
        reachable = self._probe(session)
        session.status = ERROR if (reachable or timed_out) else DISCONNECTED
        if session.status == DISCONNECTED:
            session.client = None
        session.last_error = message
        log.warning("%s: %s (status %s)", session.datasite_id, message, session.status)

    def get_connected_datasites(self) -> dict[str, dict[str, Any]]:
        """{datasite_id: {url, status, capabilities, connection_time}} for every known datasite."""
        with self._lock:
            return {
                ds: {
                    "url": s.url,
                    "status": s.status,
                    "capabilities": dict(s.capabilities),
                    "connection_time": s.connection_time,
                    **({"last_error": s.last_error} if s.last_error else {}),
                }
                for ds, s in self._sessions.items()
            }

    def is_connected(self, datasite_id: str) -> bool:
        """Whether the last interaction with the datasite succeeded."""
        session = self._sessions.get(datasite_id)
        return session is not None and session.status == CONNECTED

    def get_connection_status(self) -> dict[str, str]:
        """{datasite_id: 'connected' | 'disconnected' | 'error'}."""
        with self._lock:
            return {ds: s.status for ds, s in self._sessions.items()}

    def disconnect_from_datasite(self, datasite_id: str) -> bool:
        """Drop the session (PySyft sessions are stateless tokens); False if unknown."""
        session = self._sessions.get(datasite_id)
        if session is None:
            return False
        with session.lock:
            session.client = None
            session.assets, session.model_ptr, session.model_digest = {}, None, None
            session.status = DISCONNECTED
        return True

    def cleanup_all_connections(self) -> None:
        """Disconnect from every datasite and forget them all."""
        with self._lock:
            for ds in list(self._sessions):
                self.disconnect_from_datasite(ds)
            self._sessions.clear()

    # ------------------------------------------------------------------ data movement
    def _connected(self, datasite_id: str) -> _Session | None:
        session = self._sessions.get(datasite_id)
        if session is None or session.status != CONNECTED or session.client is None:
            return None
        return session

    def _upload(self, session: _Session, data: bytes) -> tuple[Any, str]:
        """Store bytes at the datasite; return the pointer and the SHA-256 the datasite holds."""
        import syft as sy

        def run() -> tuple[Any, str]:
            ptr = _syft_ok(sy.ActionObject.from_obj(data).send(session.client), "upload")
            held = _syft_ok(ptr.get(), "read back")
            if not isinstance(held, bytes | bytearray):
                raise DatasiteError("datasite returned a non-bytes object for an upload")
            return ptr, hashlib.sha256(bytes(held)).hexdigest()

        return _call_with_timeout(run, self.request_timeout_s, "upload")

    def _encode_model(self, model_parameters: Mapping[str, Any]) -> bytes:
        params = {
            k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
            for k, v in dict(model_parameters).items()
        }
        return encode_state_dict(params)

    def send_model(self, model_parameters: Mapping[str, Any], datasite_id: str) -> bool:
        """Upload the global model; True only when the datasite holds exactly these bytes."""
        if not isinstance(model_parameters, Mapping) or not model_parameters:
            raise MalformedMessage("model_parameters must be a non-empty mapping name -> tensor")
        data = self._encode_model(model_parameters)
        sent = hashlib.sha256(data).hexdigest()
        session = self._connected(datasite_id)
        if session is None:
            log.warning("send_model: %s is not connected", datasite_id)
            return False
        with session.lock:
            try:
                ptr, held = self._upload(session, data)
            except Exception as exc:
                self._fail(
                    session, f"send_model failed: {exc}", timed_out=isinstance(exc, TimeoutError)
                )
                return False
            if held != sent:
                session.last_error = "datasite holds a different model than was sent"
                log.error("%s: %s", datasite_id, session.last_error)
                return False
            session.model_ptr, session.model_digest = ptr, sent
            return True

    def broadcast_to_all(self, message: Mapping[str, Any]) -> dict[str, bool]:
        """Deliver ``message`` (msgpack-able) to every known datasite; {datasite_id: delivered}."""
        data = encode_payload({"broadcast": dict(message), "sent_at": time.time()})
        sent = hashlib.sha256(data).hexdigest()
        results = {}
        for ds in list(self._sessions):
            session = self._connected(ds)
            if session is None:
                results[ds] = False
                continue
            with session.lock:
                try:
                    _, held = self._upload(session, data)
                    results[ds] = held == sent
                except Exception as exc:
                    self._fail(
                        session, f"broadcast failed: {exc}", timed_out=isinstance(exc, TimeoutError)
                    )
                    results[ds] = False
        return results

    # ------------------------------------------------------------------ training
    def _error(self, datasite_id: str, exc: BaseException | str, **extra: Any) -> dict[str, Any]:
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "TrainingError"
        return {
            "datasite_id": datasite_id,
            "error": str(exc),
            "error_type": kind,
            "status": self._sessions[datasite_id].status if datasite_id in self._sessions else None,
            **extra,
        }

    def _job_for(self, model_type: Any) -> Callable:
        """The job to submit: the fixed one, the shipped job, or the own model's job (its
        entry point and the digest of its source installed here are in the job's code)."""
        from federation.datasite.job import model_training_job, pdmfed_train_job
        from federation.ml.own_model import is_entry_point

        if self.training_job is not None:
            return self.training_job
        return model_training_job(model_type) if is_entry_point(model_type) else pdmfed_train_job

    def _submit_job(
        self, session: _Session, config_bytes: bytes, round_number: int, model_type: Any = None
    ) -> tuple[Any, str, dict]:
        from federation.datasite.partition import FEATURES, LABELS

        if FEATURES not in session.assets or LABELS not in session.assets:
            raise DatasiteError("datasite has no pdm_partition features/labels assets")
        cfg_ptr, _ = self._upload(session, config_bytes)
        inputs = {
            "features": session.assets[FEATURES],
            "labels": session.assets[LABELS],
            "global_model": session.model_ptr,
            "train_config": cfg_ptr,
        }
        name = f"pdmfed_train_r{max(0, round_number)}_{uuid.uuid4().hex[:12]}"
        job = self._job_for(model_type)
        return self._request_code(session, job, inputs, name), name, inputs

    def _request_code(self, session: _Session, job: Callable, inputs: dict, name: str) -> Any:
        import syft as sy
        from syft.service.policy.policy import ExactMatch, SingleExecutionExactOutput

        def run() -> Any:
            submit = sy.syft_function(
                input_policy=ExactMatch(init_kwargs=_inputs_at(session.client, inputs)),
                output_policy=SingleExecutionExactOutput(),
                name=name,
            )(job)
            return _syft_ok(session.client.code.request_code_execution(submit), "code request")

        return _call_with_timeout(run, self.request_timeout_s, "code request")

    def _await_approval(self, request: Any, datasite_id: str) -> None:
        from syft.service.request.request import RequestStatus

        deadline = time.monotonic() + self.approval_timeout_s
        while True:
            status = _call_with_timeout(lambda: request.status, self.request_timeout_s, "status")
            if status == RequestStatus.APPROVED:
                return
            if status == RequestStatus.REJECTED:
                raise ApprovalPendingError(f"{datasite_id} rejected code request {request.id}")
            if time.monotonic() >= deadline:
                raise ApprovalPendingError(
                    f"code request {request.id} is still pending at {datasite_id} after "
                    f"{self.approval_timeout_s:g}s (not on the datasite's allow-list?)"
                )
            time.sleep(self.poll_interval_s)

    def _run_job(self, session: _Session, name: str, inputs: dict) -> Any:
        def run() -> Any:
            session.client.refresh()
            fn = getattr(session.client.code, name)
            ptr = _syft_ok(fn(**inputs), "training job")
            return _syft_ok(ptr.get() if hasattr(ptr, "get") else ptr, "training result")

        return _call_with_timeout(run, self.training_timeout_s, "training")

    def _decode_result(self, raw: Any, session: _Session) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise TrainingError(f"training job returned {type(raw).__name__}, not a result map")
        if raw.get("error"):
            raise TrainingError(f"training job failed at the datasite: {raw['error']}")
        result = dict(raw)
        result["model_update"] = decode_state_dict(bytes(raw["model_update"]))
        result["delta"] = decode_state_dict(bytes(raw["delta"]))
        if tensor_digest(result["model_update"]) != raw.get("update_digest"):
            raise TrainingError("model_update does not match its digest")
        if raw.get("global_model_digest") != session.model_digest:
            raise TrainingError("the datasite trained from a different global model than was sent")
        for key in ("factory_signature", "update_signature"):
            if isinstance(result.get(key), bytearray):
                result[key] = bytes(result[key])
        if self.factory_trust is not None:
            from federation.datasite.signing import verify_factory_result

            verify_factory_result(result, self.factory_trust)
        return result

    def request_stats(self, stats_config: Mapping[str, Any], datasite_id: str) -> dict[str, Any]:
        """Round 0: the approved statistics job on the datasite's raw partition; a result dict
        (stats, stats_signature, factory_key_id, datasite_id, campaign_id) or one with 'error'.
        """
        from federation.datasite.job import pdmfed_stats_job
        from federation.datasite.partition import FEATURES

        if not isinstance(stats_config, Mapping):
            raise MalformedMessage("stats_config must be a mapping")
        session = self._connected(datasite_id)
        if session is None:
            return self._error(
                datasite_id, DatasiteConnectionError(f"{datasite_id} is not connected")
            )
        with session.lock:
            request_id = None
            try:
                if FEATURES not in session.assets:
                    raise DatasiteError("datasite has no pdm_partition features asset")
                cfg_ptr, _ = self._upload(session, encode_payload(dict(stats_config)))
                inputs = {"features": session.assets[FEATURES], "stats_config": cfg_ptr}
                name = f"pdmfed_stats_{uuid.uuid4().hex[:12]}"
                request = self._request_code(session, pdmfed_stats_job, inputs, name)
                request_id = str(request.id)
                self._await_approval(request, datasite_id)
                raw = self._run_job(session, name, inputs)
                result = self._decode_stats(raw)
            except (ApprovalPendingError, TrainingError, MalformedMessage) as exc:
                if not self._probe(session):
                    self._fail(session, str(exc))
                return self._error(datasite_id, exc, request_id=request_id)
            except PdmFedError as exc:  # e.g. a factory signature that does not verify
                return self._error(datasite_id, exc, request_id=request_id)
            except Exception as exc:  # transport: the datasite died or timed out
                self._fail(
                    session, f"statistics failed: {exc}", timed_out=isinstance(exc, TimeoutError)
                )
                return self._error(datasite_id, exc, request_id=request_id)
        result["request_id"] = request_id
        return result

    def _decode_stats(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise TrainingError(f"statistics job returned {type(raw).__name__}, not a result map")
        if raw.get("error"):
            raise TrainingError(f"statistics job failed at the datasite: {raw['error']}")
        result = dict(raw)
        if isinstance(result.get("stats_signature"), bytearray):
            result["stats_signature"] = bytes(result["stats_signature"])
        if self.factory_trust is not None:
            from federation.datasite.signing import verify_stats_signature

            verify_stats_signature(result, self.factory_trust)
        return result

    def request_training(
        self, training_config: Mapping[str, Any], datasite_id: str
    ) -> dict[str, Any]:
        """Run the approved job on the datasite's private data; a result dict, or one with 'error'.

        Result: loss, accuracy, rmse, num_samples, model_update (name -> tensor), delta,
        training_time, factory_signature, update_signature, update_digest, delta_digest,
        round_number, datasite_id, request_id, wall_time.
        """
        if not isinstance(training_config, Mapping):
            raise MalformedMessage("training_config must be a mapping")
        config = dict(training_config)
        config_bytes = encode_payload(config)
        round_number = int(config.get("round_number", 0) or 0)
        session = self._connected(datasite_id)
        if session is None:
            return self._error(
                datasite_id, DatasiteConnectionError(f"{datasite_id} is not connected")
            )
        if session.model_ptr is None:
            return self._error(datasite_id, TrainingError("send_model() first: no global model"))
        started = time.perf_counter()
        with session.lock:
            request_id = None
            try:
                request, name, inputs = self._submit_job(
                    session, config_bytes, round_number, config.get("model_type")
                )
                request_id = str(request.id)
                self._await_approval(request, datasite_id)
                raw = self._run_job(session, name, inputs)
                result = self._decode_result(raw, session)
            except (ApprovalPendingError, TrainingError, MalformedMessage) as exc:
                if not self._probe(session):
                    self._fail(session, str(exc))
                return self._error(datasite_id, exc, request_id=request_id)
            except PdmFedError as exc:  # e.g. a factory signature that does not verify
                return self._error(datasite_id, exc, request_id=request_id)
            except Exception as exc:  # transport: the datasite died or timed out
                self._fail(
                    session, f"training failed: {exc}", timed_out=isinstance(exc, TimeoutError)
                )
                return self._error(datasite_id, exc, request_id=request_id)
        result["request_id"] = request_id
        result["wall_time"] = time.perf_counter() - started
        return result
