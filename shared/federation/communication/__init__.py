"""Seed API for talking to factory datasites: standard and secure PySyft communication managers."""

from __future__ import annotations

from typing import Any

from .syft_client import PySyftCommunicationManager

__all__ = [
    "PySyftCommunicationManager",
    "SecurePySyftCommunicationManager",
    "FederatedLearningOrchestrator",
    "ProductionSecureOrchestrator",
]


def __getattr__(name: str) -> Any:
    # PEP 562: the secure manager lives in its own module and pulls in the crypto stack
    if name == "SecurePySyftCommunicationManager":
        from .secure_syft_client import SecurePySyftCommunicationManager

        return SecurePySyftCommunicationManager
    if name in ("FederatedLearningOrchestrator", "ProductionSecureOrchestrator"):
        from . import orchestrators

        return getattr(orchestrators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
