"""`pdmfed datasite launch` / `python -m federation.datasite`: run one factory datasite until stopped."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from federation.console import EXIT_FAILED, fail
from federation.errors import ConfigError

__all__ = ["datasite_main", "job_hash_command", "launch_command"]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            extra = [k for k in ("settings", "decimals") if k in npz.files]  # per-regime stats
            return {k: npz[k] for k in ("X", "y", *extra)}
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read partition {path}: {exc}") from exc


def _allow_list(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read allow-list {path}: {exc.strerror}") from exc
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def launch_command(
    *,
    name: str,
    data: Path,
    port: int,
    host: str,
    keys_dir: Path | None,
    allow_list: Path | None,
    admin_email: str | None,
    orchestrator_email: str | None,
    demo: bool,
    approve_models: list[str] | None = None,
) -> int:
    """Launch, print one JSON line (id, url, public key), serve until SIGINT/SIGTERM; exit code."""
    partition = _load_npz(data)
    approved = _allow_list(allow_list)
    from federation.datasite.launcher import launch_datasite

    handle = launch_datasite(
        name,
        port,
        partition,
        admin_email=admin_email,
        allow_list=approved,
        signing_key_dir=keys_dir,
        host=host,
        orchestrator_email=orchestrator_email,
        demo=demo,
        approved_models=approve_models or (),
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    info = {
        "datasite_id": handle.datasite_id,
        "url": handle.url,
        "port": handle.port,
        "public_key": handle.public_key.hex(),
    }
    print(json.dumps(info), flush=True)
    try:
        while not done.wait(0.5):
            if not handle.is_alive():
                fail(f"datasite {handle.datasite_id} server died", EXIT_FAILED)
        return 0
    finally:
        handle.stop()


def job_hash_command(model: str | None) -> int:
    """Print the request hash of the training job (for ``model``: at its source installed here)."""
    from federation.datasite.policy import training_request
    from federation.ml.models import ModelConfigError

    try:
        print(training_request(model=model).digest())
    except ModelConfigError as exc:
        fail(str(exc))
    return 0


def datasite_main(argv: list[str] | None = None) -> int:
    """`pdmfed datasite launch ARGS` as a function (exit code)."""
    from federation.cli import main

    return main(["datasite", "launch", *(sys.argv[1:] if argv is None else argv)])
