"""The datasite's code-approval policy: a request runs only if its code hash is on the allow-list."""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from textwrap import dedent

from federation.errors import ConfigError

__all__ = [
    "ApprovalPolicy",
    "Decision",
    "approved_job_hashes",
    "code_hash",
    "job_code_hash",
    "normalise_code",
]

_DEF = re.compile(r"\bdef\s+\w+\s*\(")
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Every submission renames the job (PySyft refuses the same code twice); the name is not policy.
_CANONICAL_DEF = "def pdmfed_job("


def normalise_code(raw_code: str) -> str:
    """The submitted source with its function name replaced by a fixed one."""
    if not isinstance(raw_code, str):
        raise ConfigError(f"code must be a string, got {type(raw_code).__name__}")
    return _DEF.sub(_CANONICAL_DEF, raw_code.strip("\n"), count=1)


def code_hash(raw_code: str) -> str:
    """SHA-256 hex of the normalised source: equal exactly when the job body is equal."""
    return hashlib.sha256(normalise_code(raw_code).encode("utf-8")).hexdigest()


def job_code_hash(fn: Callable) -> str:
    """The hash a datasite will compute for ``fn`` once PySyft has received its source."""
    return code_hash(dedent(inspect.getsource(fn)))


def approved_job_hashes() -> frozenset[str]:
    """Hashes of the jobs this package ships (the training job)."""
    from federation.datasite.job import pdmfed_train_job

    return frozenset({job_code_hash(pdmfed_train_job)})


@dataclass(frozen=True)
class Decision:
    """What the policy says about one code request."""

    approve: bool
    code_hash: str
    reason: str


class ApprovalPolicy:
    """Approve a code request only when its hash is on the factory's allow-list."""

    def __init__(self, allow_list: Iterable[str]) -> None:
        hashes = set()
        for h in allow_list:
            if not isinstance(h, str) or not _HEX64.fullmatch(h.lower()):
                raise ConfigError(f"allow-list entry {h!r} is not a SHA-256 hex digest")
            hashes.add(h.lower())
        self.allow_list = frozenset(hashes)

    def decide(self, raw_code: str) -> Decision:
        """Approve iff the code's hash is allow-listed; anything else stays pending."""
        try:
            digest = code_hash(raw_code)
        except ConfigError as exc:
            return Decision(False, "", f"unreadable code: {exc}")
        if digest in self.allow_list:
            return Decision(True, digest, "code hash is on the allow-list")
        return Decision(False, digest, "code hash is not on the allow-list")
