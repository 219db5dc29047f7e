"""Launch a factory datasite on real PySyft: private partition, credentials, approval watcher."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from federation.config import load_settings
from federation.crypto.signing import SigningIdentity, check_sender_name
from federation.crypto.strength import check_secret
from federation.datasite.job import ENV_ATTACK, ENV_DATASITE_ID, ENV_KEYS_DIR
from federation.datasite.partition import (
    CAPABILITIES,
    DATASET_NAME,
    ENV_REGIME_DECIMALS,
    FEATURES,
    LABELS,
    check_partition,
    check_settings,
    make_mock,
)
from federation.datasite.policy import (
    UPLOAD,
    ApprovalPolicy,
    Decision,
    RequestPieces,
    approved_job_hashes,
    asset_binding,
    training_request,
)
from federation.datasite.server import start_server, wait_until_serving
from federation.errors import ConfigError, DatasiteError

__all__ = ["DatasiteHandle", "launch_datasite", "free_port"]

log = logging.getLogger(__name__)

#: PySyft's public default root password: the server is never built with it (see datasite.server).
_SYFT_DEFAULT_PASSWORD = "changethis"  # noqa: S105 - refused as a factory's password
_MIN_PASSWORD_CHARS = 12
_ENV_ORCHESTRATOR_PASSWORD = "PDMFED_DATASITE_ORCHESTRATOR_PASSWORD"

# PySyft forks the datasite's server process; env vars and the fork must not interleave with
# another launch, and watcher threads pause so no lock is held mid-request at fork time.
_FORK_LOCK = threading.RLock()
_LIVE: weakref.WeakSet[DatasiteHandle] = weakref.WeakSet()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # as uvicorn binds: TIME_WAIT leftovers of a crashed server do not block a restart
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104


@contextlib.contextmanager
def _env(values: Mapping[str, str]):  # noqa: ANN202
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """PySyft prints banners and progress bars; keep them out of our stdout.

    Swaps the process-wide sys.stdout: only call it while holding _FORK_LOCK.
    """
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _ok(result: Any, what: str) -> Any:
    """PySyft returns some failures as SyftError values instead of raising them."""
    from syft.service.response import SyftError

    if isinstance(result, SyftError):
        raise DatasiteError(f"{what} failed: {result.message}")
    return result


def _class_path(policy_type: Any) -> str:
    """A policy's class path; a policy submitted as code is named by its code's hash."""
    if isinstance(policy_type, type):
        return f"{policy_type.__module__}.{policy_type.__qualname__}"
    raw = getattr(policy_type, "raw_code", None)
    if isinstance(raw, str):
        return "user-policy:" + hashlib.sha256(raw.encode("utf-8")).hexdigest()
    return f"unknown:{type(policy_type).__qualname__}"


def _login(url: str, email: str, password: str) -> Any:
    import syft as sy

    return sy.login(url=url, email=email, password=password, cache=False)


class _ApprovalWatcher(threading.Thread):
    """Polls the datasite's code requests as admin and applies the allow-list policy."""

    def __init__(self, handle: DatasiteHandle, policy: ApprovalPolicy, interval_s: float) -> None:
        super().__init__(name=f"pdmfed-approval-{handle.datasite_id}", daemon=True)
        self._handle = handle
        self._policy = policy
        self._interval = interval_s
        self._stop_event = threading.Event()
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.pending: list[dict[str, Any]] = []
        self.approved: list[dict[str, Any]] = []
        self._client: Any = None
        self._assets: dict[str, str] | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            try:
                with _FORK_LOCK:
                    self._poll()
            except Exception as exc:  # a dead or restarting datasite: retry with a fresh login
                log.debug("approval watcher of %s: %s", self._handle.datasite_id, exc)
                self._client = self._assets = None

    def _poll(self) -> None:
        if self._client is None:
            self._client = _login(
                self._handle.url, self._handle.admin_email, self._handle._admin_password
            )
        from syft.service.request.request import RequestStatus

        for request in self._client.api.services.request.get_all():
            rid = str(request.id)
            if rid in self._seen:
                continue
            if request.status != RequestStatus.PENDING:
                self._seen.add(rid)
                continue
            code = request.code
            pieces = self._pieces(request, code)
            decision = (
                self._policy.decide(pieces)
                if isinstance(pieces, RequestPieces)
                else Decision(False, "", pieces)
            )
            entry = {
                "request_id": rid,
                "func_name": getattr(code, "service_func_name", "?"),
                "request_hash": decision.request_hash,
                "reason": decision.reason,
                "seen_at": time.time(),
            }
            if decision.approve:
                _ok(self._client.api.services.request.apply(request.id), "approve")
                with self._lock:
                    self.approved.append(entry)
                log.info("%s approved %s (%s)", self._handle.datasite_id, rid, entry["func_name"])
            else:
                with self._lock:
                    self.pending.append(entry)
                log.warning(
                    "%s left request %s pending: %s (hash %s)",
                    self._handle.datasite_id,
                    rid,
                    decision.reason,
                    decision.request_hash[:12],
                )
            self._seen.add(rid)

    def _asset_bindings(self) -> dict[str, str]:
        """This datasite's assets by action id (what a request's arguments may be bound to)."""
        if self._assets is None:
            self._assets = {
                str(asset.action_id): asset_binding(dataset.name, asset.name)
                for dataset in self._client.datasets
                for asset in dataset.assets
            }
        return self._assets

    def _pieces(self, request: Any, code: Any) -> RequestPieces | str:
        """The approval-relevant pieces of a PySyft code request, or why it cannot be approved."""
        from syft.service.request.request import UserCodeStatusChange

        changes = list(getattr(request, "changes", None) or [])
        if len(changes) != 1 or not isinstance(changes[0], UserCodeStatusChange):
            return "the request carries changes other than running one piece of code"
        raw_code = getattr(code, "raw_code", None)
        if not isinstance(raw_code, str):
            return "unreadable code"
        assets = self._asset_bindings()
        bindings: dict[str, str] = {}
        for server, args in (code.input_policy_init_kwargs or {}).items():
            here = str(getattr(server, "server_id", "")) == str(code.server_uid)
            for arg, uid in dict(args).items():
                bindings[str(arg)] = assets.get(str(uid), UPLOAD) if here else f"foreign:{uid}"
        return RequestPieces(
            code=raw_code,
            input_policy=_class_path(code.input_policy_type),
            bindings=bindings,
            output_policy=_class_path(code.output_policy_type),
            output_settings=dict(code.output_policy_init_kwargs or {}),
            uses_datasite=bool(getattr(code, "uses_datasite", False)),
            nested_codes=tuple(sorted(str(k) for k in (code.nested_codes or {}))),
        )

    def report(self, which: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in getattr(self, which)]


class DatasiteHandle:
    """A running factory datasite: where it is, its public key, its policy report, stop()."""

    def __init__(
        self,
        *,
        name: str,
        datasite_id: str,
        host: str,
        port: int,
        admin_email: str,
        admin_password: str,
        public_key: bytes,
        keys_dir: Path,
        temp_root: Path,
        server: Any,
        pid: int,
    ) -> None:
        self.name = name
        self.datasite_id = datasite_id
        self.host = host
        self.port = port
        self.url = f"http://{_url_host(host)}:{port}"
        self.admin_email = admin_email
        self._admin_password = admin_password
        self.public_key = public_key
        self.keys_dir = keys_dir
        self.temp_root = temp_root
        self.pid = pid
        self._server = server
        self._watcher: _ApprovalWatcher | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"DatasiteHandle({self.datasite_id!r}, url={self.url!r}, alive={self.is_alive()})"

    def __enter__(self) -> DatasiteHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def is_alive(self) -> bool:
        """Whether the datasite's server process is running."""
        try:
            proc = psutil.Process(self.pid)
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def pending_requests(self) -> list[dict[str, Any]]:
        """Code requests the policy refused: they stay pending for a human to review."""
        return self._watcher.report("pending") if self._watcher else []

    def approved_requests(self) -> list[dict[str, Any]]:
        """Code requests the policy approved (allow-listed hash)."""
        return self._watcher.report("approved") if self._watcher else []

    def kill(self) -> None:
        """SIGKILL the server process (simulates a crash; stop() still cleans up)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the watcher and the server; leave no child process and no temp dir behind."""
        if self._stopped:
            return
        self._stopped = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.join(timeout=5)
        try:
            procs = [psutil.Process(self.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            procs = []
        with contextlib.suppress(Exception):  # already dead: the sweep below still runs
            self._server.terminate()
            self._server.join(5)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=5)
        shutil.rmtree(self.temp_root, ignore_errors=True)
        _LIVE.discard(self)


def _stop_all_at_exit() -> None:
    for handle in list(_LIVE):
        with contextlib.suppress(Exception):
            handle.stop()


atexit.register(_stop_all_at_exit)


def _resolve_admin(
    admin_email: str | None, admin_password: str | None, demo: bool
) -> tuple[str, str, bool]:
    settings = load_settings()
    demo = demo or settings.demo
    email = admin_email or settings.datasite_admin_email
    password = admin_password
    if password is None and settings.datasite_admin_password is not None:
        password = settings.datasite_admin_password.get_secret_value()
    if password is None:
        if not demo:
            raise ConfigError(
                "PDMFED_DATASITE_ADMIN_PASSWORD is not set (required outside `pdmfed demo`)"
            )
        password = secrets.token_urlsafe(18)
    if password == _SYFT_DEFAULT_PASSWORD:
        raise ConfigError("datasite admin password is PySyft's public default")
    if not demo:
        check_secret(password, "datasite admin password", min_chars=_MIN_PASSWORD_CHARS)
    return email, password, demo


def _resolve_connector_account(
    email: str | None, password: str | None, demo: bool, admin_password: str
) -> tuple[str, str] | None:
    """The connector's data-scientist account (argument, else settings/secrets), if any."""
    settings = load_settings()
    email = email or settings.datasite_orchestrator_email
    if not email:
        return None
    if password is None and settings.datasite_orchestrator_password is not None:
        password = settings.datasite_orchestrator_password.get_secret_value()
    if not password:
        raise ConfigError(f"{_ENV_ORCHESTRATOR_PASSWORD} is not set for {email}")
    if password == admin_password:
        raise ConfigError("the connector's datasite password must not be the admin password")
    if not demo:
        check_secret(password, _ENV_ORCHESTRATOR_PASSWORD, min_chars=_MIN_PASSWORD_CHARS)
    return email, password


def _approved_models(entry_points: Iterable[str]) -> dict[str, Any]:
    """Capabilities naming each approved own model and the digest of its installed source."""
    from federation.ml.models import ModelConfigError
    from federation.ml.own_model import source_digest

    try:
        digests = {ep: source_digest(ep) for ep in entry_points}
    except ModelConfigError as exc:
        raise ConfigError(f"cannot approve {exc}") from exc
    if not digests:
        return {}
    from federation.ml.models import SUPPORTED_MODELS

    return {"supported_models": [*SUPPORTED_MODELS, *digests], "approved_models": digests}


def _capabilities(
    datasite_id: str, X: Any, public_key: bytes, allow: Iterable[str], extra: Mapping | None
) -> dict[str, Any]:
    import torch

    from federation.ml.models import SUPPORTED_MODELS

    caps: dict[str, Any] = {
        "datasite_id": datasite_id,
        "supported_models": list(SUPPORTED_MODELS),
        "data_types": ["time_series", "tabular"],
        "compute_resources": "gpu" if torch.cuda.is_available() else "cpu",
        "cpu_count": os.cpu_count() or 1,
        "max_clients": 1,
        "privacy_features": ["code_allow_list", "factory_signed_updates", "synthetic_mock"],
        "num_samples": int(X.shape[0]),
        "window": int(X.shape[1]),
        "n_features": int(X.shape[2]),
        "factory_public_key": public_key.hex(),
        "approved_job_hashes": sorted(allow),
    }
    caps.update(dict(extra or {}))
    return caps


def _configure(
    handle: DatasiteHandle,
    X: Any,
    y: Any,
    caps: dict[str, Any],
    orchestrator: tuple[str, str] | None,
    mock_seed: int,
    settings_channels: int = 0,
) -> None:
    import syft as sy
    from syft.service.user.user_roles import ServiceRole

    admin = _login(handle.url, handle.admin_email, handle._admin_password)
    with _quiet():
        if orchestrator is not None:
            email, password = orchestrator
            _ok(
                admin.users.create(
                    name="pdmfed-orchestrator",
                    email=email,
                    password=password,
                    password_verify=password,
                    role=ServiceRole.DATA_SCIENTIST,
                ),
                "create orchestrator account",
            )
        mock_X, mock_y = make_mock(X, y, seed=mock_seed, settings_channels=settings_channels)
        dataset = sy.Dataset(
            name=DATASET_NAME,
            description=f"Private sensor windows of factory {handle.datasite_id} (RUL labels).",
        )
        dataset.add_asset(sy.Asset(name=FEATURES, data=X, mock=mock_X))
        dataset.add_asset(sy.Asset(name=LABELS, data=y, mock=mock_y))
        dataset.add_asset(sy.Asset(name=CAPABILITIES, data=caps, mock=caps))
        _ok(admin.upload_dataset(dataset), "upload dataset")


def launch_datasite(
    name: str,
    port: int | None,
    partition_arrays: Any,
    admin_email: str | None = None,
    admin_password: str | None = None,
    allow_list: Iterable[str] | None = None,
    signing_key_dir: str | Path | None = None,
    *,
    datasite_id: str | None = None,
    host: str = "127.0.0.1",
    orchestrator_email: str | None = None,
    orchestrator_password: str | None = None,
    capabilities: Mapping[str, Any] | None = None,
    demo: bool = False,
    poll_interval_s: float = 0.2,
    mock_seed: int = 0,
    attack: str | None = None,
    approved_models: Iterable[str] = (),
) -> DatasiteHandle:
    """Start a PySyft datasite holding ``partition_arrays`` ({'X','y'}) and its approval watcher.

    The admin password comes from the argument or PDMFED_DATASITE_ADMIN_PASSWORD (a random one
    only in demo mode); ``orchestrator_email`` creates a data-scientist account for the
    orchestrator (password from the argument or PDMFED_DATASITE_ORCHESTRATOR_PASSWORD). The
    factory's Ed25519 key is loaded or created in ``signing_key_dir`` (default: inside the
    datasite's temp dir) and is read only by the training job at the datasite.
    ``approved_models`` are own models' entry points the factory approves at the source it has
    installed now (their jobs' request hashes join the allow-list; see ``approved_job_hashes``).
    """
    datasite_id = check_sender_name(datasite_id or name)
    X, y = check_partition(partition_arrays)
    settings, decimals = check_settings(partition_arrays, X)
    email, password, demo = _resolve_admin(admin_email, admin_password, demo)
    orchestrator = _resolve_connector_account(
        orchestrator_email, orchestrator_password, demo, password
    )
    model_caps = _approved_models(approved_models)
    allowed = set(approved_job_hashes() if allow_list is None else allow_list)
    allowed |= {training_request(model=m).digest() for m in model_caps.get("approved_models", {})}
    policy = ApprovalPolicy(allowed)
    port = free_port(host) if not port else int(port)
    if not _port_is_free(host, port):
        raise DatasiteError(f"port {port} on {host} is already in use")

    temp_root = Path(tempfile.mkdtemp(prefix=f"pdmfed-ds-{datasite_id}-"))
    keys_dir = Path(signing_key_dir) if signing_key_dir else temp_root / "keys"
    try:
        identity = SigningIdentity.load_or_create(keys_dir, datasite_id)
    except Exception:
        shutil.rmtree(temp_root, ignore_errors=True)
        raise
    env = {
        "SYFT_TEMP_ROOT": str(temp_root / "syft"),
        ENV_DATASITE_ID: datasite_id,
        ENV_KEYS_DIR: str(keys_dir.resolve()),
        # A compromised factory (demo and robustness tests only): its installed software
        # manipulates what it sends; it still signs it with its own key.
        ENV_ATTACK: attack or "",
        # the features asset carries each window row's operating settings after the sensors
        ENV_REGIME_DECIMALS: json.dumps(list(decimals)),
    }
    with _FORK_LOCK:
        server, pid = _start_server(name, port, host, env, temp_root, email, password)
        handle = DatasiteHandle(
            name=name,
            datasite_id=datasite_id,
            host=host,
            port=port,
            admin_email=email,
            admin_password=password,
            public_key=identity.public_bytes(),
            keys_dir=keys_dir,
            temp_root=temp_root,
            server=server,
            pid=pid,
        )
        _LIVE.add(handle)
        try:
            wait_until_serving(server, handle.url, temp_root / "server.log")
            regime_caps = {"regime_decimals": list(decimals)} if decimals else {}
            caps = _capabilities(
                datasite_id,
                X,
                handle.public_key,
                policy.allow_list,
                {**model_caps, **regime_caps, **dict(capabilities or {})},
            )
            asset = X if settings is None else np.concatenate([X, settings], axis=2)
            _configure(handle, asset, y, caps, orchestrator, mock_seed, len(decimals))
        except Exception as exc:
            handle.stop()
            if isinstance(exc, DatasiteError | ConfigError):
                raise
            raise DatasiteError(f"configuring datasite {datasite_id} failed: {exc}") from exc
    handle._watcher = _ApprovalWatcher(handle, policy, poll_interval_s)
    handle._watcher.start()
    log.info("datasite %s up at %s (demo=%s)", datasite_id, handle.url, demo)
    return handle


def _start_server(
    name: str, port: int, host: str, env: dict[str, str], temp_root: Path, email: str, password: str
) -> tuple[Any, int]:
    """Fork the datasite's server process with its environment and root account; (process, pid)."""
    with _env(env):
        try:
            process = start_server(name, host, port, email, password, temp_root / "server.log")
        except Exception as exc:
            shutil.rmtree(temp_root, ignore_errors=True)
            raise DatasiteError(f"PySyft could not launch {name}: {exc}") from exc
    return process, int(process.pid)
