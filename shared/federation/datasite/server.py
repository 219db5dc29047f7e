"""The datasite's PySyft server process: the factory's root account exists before it listens.

PySyft's own launcher (``sy.orchestra.launch``) builds the server with its public default
root login (``info@openmined.org`` / ``changethis``) and only then could a caller change it:
whoever logged in meanwhile kept root's signing key, which is the server's own key, so no
later password change revokes it. Here the server is built with the factory's root
credentials (``Server(root_email=..., root_password=...)``) and uvicorn binds the port only
afterwards: no default credential is ever valid.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

from federation.errors import DatasiteConnectionError

__all__ = ["start_server", "wait_until_serving"]

_LOG_TAIL_BYTES = 2000


def _serve(
    name: str, host: str, port: int, root_email: str, root_password: str, log_path: str
) -> None:
    """Child process: build the datasite with the factory's root account, then serve it."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # the parent may have swapped them
    import uvicorn
    from fastapi import APIRouter, FastAPI
    from syft.server.datasite import Datasite
    from syft.server.routes import make_routes
    from syft.server.uvicorn import get_lifetime

    worker = Datasite(
        name=name,
        root_email=root_email,
        root_password=root_password,
        reset=True,
        processes=1,
        in_memory_workers=True,
        n_consumers=0,
        create_producer=False,
        deployment_type="python",
        server_side_type="high",
    )
    del root_password
    api = APIRouter()
    api.include_router(make_routes(worker=worker))
    app = FastAPI(title=name, lifespan=get_lifetime(worker=worker))
    app.include_router(api, prefix="/api/v2")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def start_server(
    name: str, host: str, port: int, root_email: str, root_password: str, log_path: Path
) -> Any:
    """Fork the server process (PySyft is already imported here: no second import); started."""
    import syft  # noqa: F401 - imported before the fork, so the child starts in a second

    process = multiprocessing.get_context("fork").Process(
        target=_serve,
        name=f"pdmfed-datasite-{name}",
        args=(name, host, port, root_email, root_password, str(log_path)),
        daemon=False,
    )
    process.start()
    return process


def _log_tail(log_path: Path) -> str:
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def wait_until_serving(process: Any, url: str, log_path: Path, timeout_s: float = 180.0) -> None:
    """Return once the server answers its metadata route; DatasiteConnectionError otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.is_alive():
            raise DatasiteConnectionError(
                f"datasite server exited during start-up: {_log_tail(log_path)[-500:]}"
            )
        try:
            if requests.get(f"{url}/api/v2/metadata", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise DatasiteConnectionError(f"datasite server did not answer within {timeout_s:g}s")
