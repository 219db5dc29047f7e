"""Factory datasites on PySyft: launcher, approved training job, approval policy, factory signatures."""

from __future__ import annotations

from typing import Any

from federation.datasite.policy import (
    ApprovalPolicy,
    RequestPieces,
    approved_job_hashes,
    code_hash,
    request_hash,
    training_request,
)
from federation.datasite.signing import verify_factory_result, verify_update_signature

__all__ = [
    "ApprovalPolicy",
    "DatasiteHandle",
    "RequestPieces",
    "approved_job_hashes",
    "code_hash",
    "datasite_main",
    "launch_datasite",
    "request_hash",
    "training_request",
    "verify_factory_result",
    "verify_update_signature",
]


def __getattr__(name: str) -> Any:
    # the launcher imports PySyft (seconds); load it only when asked for
    if name in ("DatasiteHandle", "launch_datasite"):
        from federation.datasite import launcher

        return getattr(launcher, name)
    if name == "datasite_main":
        from federation.datasite.cli import datasite_main

        return datasite_main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
