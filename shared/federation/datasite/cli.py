"""`pdmfed datasite launch` / `python -m federation.datasite`: run one factory datasite until stopped."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from federation.errors import PdmFedError

__all__ = ["datasite_main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdmfed datasite launch",
        description="Run a factory PySyft datasite holding one private partition. Passwords come "
        "from PDMFED_DATASITE_ADMIN_PASSWORD / PDMFED_DATASITE_ORCHESTRATOR_PASSWORD, never argv.",
    )
    p.add_argument("--name", required=True, help="datasite id, e.g. automotive_detroit_main")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--data", required=True, type=Path, help=".npz with arrays X and y")
    p.add_argument("--keys-dir", type=Path, default=None, help="factory signing key directory")
    p.add_argument("--allow-list", type=Path, default=None, help="file of code hashes, one a line")
    p.add_argument("--admin-email", default=None)
    p.add_argument("--orchestrator-email", default=None, help="create this data-scientist account")
    p.add_argument("--demo", action="store_true", help="allow a generated admin password")
    return p


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {"X": npz["X"], "y": npz["y"]}
    except (OSError, KeyError, ValueError) as exc:
        raise PdmFedError(f"cannot read partition {path}: {exc}") from exc


def _allow_list(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PdmFedError(f"cannot read allow-list {path}: {exc.strerror}") from exc
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def datasite_main(argv: list[str] | None = None) -> int:
    """Launch, print one JSON line (id, url, public key), serve until SIGINT/SIGTERM; exit code."""
    args = _parser().parse_args(argv)
    from federation.datasite.launcher import launch_datasite

    try:
        handle = launch_datasite(
            args.name,
            args.port,
            _load_npz(args.data),
            admin_email=args.admin_email,
            allow_list=_allow_list(args.allow_list),
            signing_key_dir=args.keys_dir,
            host=args.host,
            orchestrator_email=args.orchestrator_email,
            demo=args.demo,
        )
    except PdmFedError as exc:
        print(f"pdmfed datasite: {exc}", file=sys.stderr)
        return 2
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
                print(f"pdmfed datasite: {handle.datasite_id} server died", file=sys.stderr)
                return 1
        return 0
    finally:
        handle.stop()
