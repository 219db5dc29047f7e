"""A real PySyft 0.9.5 datasite on a free port, its data in a temp dir, landed after the module."""

from __future__ import annotations

import contextlib
import io
import os
import socket

import pytest

# Fresh syft servers create their root admin with these documented defaults.
DEFAULT_ADMIN = {"email": "info@openmined.org", "password": "changethis"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def syft_admin() -> dict[str, str]:
    return dict(DEFAULT_ADMIN)


@pytest.fixture(scope="module")
def syft_datasite(tmp_path_factory):
    sy = pytest.importorskip("syft")
    root = tmp_path_factory.mktemp("syft-root")
    old = os.environ.get("SYFT_TEMP_ROOT")
    # An absolute SYFT_TEMP_ROOT puts the server's db and blobs under pytest's temp dir.
    os.environ["SYFT_TEMP_ROOT"] = str(root)
    port = _free_port()
    with contextlib.redirect_stdout(io.StringIO()):
        handle = sy.orchestra.launch(
            name=f"mon-diag-{port}", port=port, host="127.0.0.1", reset=True
        )
    try:
        yield {"url": f"http://127.0.0.1:{port}", "name": f"mon-diag-{port}"}
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            handle.land()
        if old is None:
            os.environ.pop("SYFT_TEMP_ROOT", None)
        else:
            os.environ["SYFT_TEMP_ROOT"] = old
