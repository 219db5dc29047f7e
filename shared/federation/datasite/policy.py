"""The datasite's approval policy: a request runs only if the whole of it is on the allow-list.

What is approved is one hash over every piece of a code request that decides what may run
and what may come out: the normalised code, the input policy's kind and what each argument
is bound to (a named asset of this datasite, or data the requester uploaded), the output
policy's kind and settings (how many executions), whether the code may use the datasite
object, and any nested code. The same code asking for more executions, or bound to other
assets, hashes differently and stays pending for a human. A campaign's own model is named in
the job's code with the SHA-256 of its source, so the model's code is covered too: a factory
approves a model by its installed source, and a changed model is a new request.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from textwrap import dedent
from typing import Any

from federation.errors import ConfigError

__all__ = [
    "ApprovalPolicy",
    "Decision",
    "RequestPieces",
    "UPLOAD",
    "approved_job_hashes",
    "asset_binding",
    "code_hash",
    "normalise_code",
    "request_hash",
    "stats_request",
    "training_request",
]

_DEF = re.compile(r"\bdef\s+\w+\s*\(")
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Every submission renames the job (PySyft refuses the same code twice); the name is not policy.
_CANONICAL_DEF = "def pdmfed_job("
_DOMAIN = b"pdmfed-approval-v1\x00"

#: An argument bound to an object the requester uploaded (model bytes, training config).
UPLOAD = "upload"
#: PySyft's policies the training request uses (class paths, so this module needs no PySyft).
EXACT_MATCH = "syft.service.policy.policy.ExactMatch"
EXECUTE_ONCE = "syft.service.policy.policy.OutputPolicyExecuteOnce"


def asset_binding(dataset: str, asset: str) -> str:
    """How an argument bound to the datasite's own asset ``dataset/asset`` is recorded."""
    return f"asset:{dataset}/{asset}"


def normalise_code(raw_code: str) -> str:
    """The submitted source with its function name replaced by a fixed one."""
    if not isinstance(raw_code, str):
        raise ConfigError(f"code must be a string, got {type(raw_code).__name__}")
    return _DEF.sub(_CANONICAL_DEF, raw_code.strip("\n"), count=1)


def code_hash(raw_code: str) -> str:
    """SHA-256 hex of the normalised source alone (one piece of a request hash)."""
    return hashlib.sha256(normalise_code(raw_code).encode("utf-8")).hexdigest()


def _plain(value: Any) -> Any:
    """A JSON-stable form of a policy setting (unknown objects by type and text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return f"{type(value).__module__}.{type(value).__qualname__}:{value}"


def request_hash(
    code: str,
    *,
    input_policy: str,
    bindings: Mapping[str, str],
    output_policy: str,
    output_settings: Mapping[str, Any] | None = None,
    uses_datasite: bool = False,
    nested_codes: Iterable[str] = (),
) -> str:
    """SHA-256 hex over everything a code request asks for; equal only for the same request.

    ``input_policy`` / ``output_policy`` are the policies' class paths; ``bindings`` maps each
    argument to :func:`asset_binding` or :data:`UPLOAD`; ``output_settings`` are the output
    policy's init arguments (its own ``id`` excluded: it is new for every submission).
    """
    doc = {
        "code": normalise_code(code),
        "input_policy": str(input_policy),
        "bindings": {str(k): str(v) for k, v in sorted(bindings.items())},
        "output_policy": str(output_policy),
        "output_settings": _plain({k: v for k, v in (output_settings or {}).items() if k != "id"}),
        "uses_datasite": bool(uses_datasite),
        "nested_codes": sorted(str(n) for n in nested_codes),
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(_DOMAIN + text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RequestPieces:
    """The pieces of one code request that the approval hash covers."""

    code: str
    input_policy: str
    bindings: Mapping[str, str]
    output_policy: str
    output_settings: Mapping[str, Any] = field(default_factory=dict)
    uses_datasite: bool = False
    nested_codes: tuple[str, ...] = ()

    def digest(self) -> str:
        """The request hash of these pieces (see :func:`request_hash`)."""
        return request_hash(
            self.code,
            input_policy=self.input_policy,
            bindings=self.bindings,
            output_policy=self.output_policy,
            output_settings=self.output_settings,
            uses_datasite=self.uses_datasite,
            nested_codes=self.nested_codes,
        )


def training_request(job: Callable | None = None, *, model: str | None = None) -> RequestPieces:
    """The request the connector submits for ``job`` (default: the shipped training job, or
    with ``model`` the job for that own model at the source digest installed here)."""
    from federation.datasite.partition import DATASET_NAME, FEATURES, LABELS

    if job is None and model is not None:
        from federation.datasite.job import model_training_job

        job = model_training_job(model)
    if job is None:
        from federation.datasite.job import pdmfed_train_job as job
    return RequestPieces(
        code=dedent(inspect.getsource(job)),
        input_policy=EXACT_MATCH,
        bindings={
            "features": asset_binding(DATASET_NAME, FEATURES),
            "labels": asset_binding(DATASET_NAME, LABELS),
            "global_model": UPLOAD,
            "train_config": UPLOAD,
        },
        output_policy=EXECUTE_ONCE,
    )


def stats_request(job: Callable | None = None) -> RequestPieces:
    """The round-0 statistics request the connector submits (default: the shipped stats job)."""
    from federation.datasite.partition import DATASET_NAME, FEATURES

    if job is None:
        from federation.datasite.job import pdmfed_stats_job as job
    return RequestPieces(
        code=dedent(inspect.getsource(job)),
        input_policy=EXACT_MATCH,
        bindings={"features": asset_binding(DATASET_NAME, FEATURES), "stats_config": UPLOAD},
        output_policy=EXECUTE_ONCE,
    )


def approved_job_hashes(models: Iterable[str] = ()) -> frozenset[str]:
    """Request hashes of the jobs this package ships (the training job and round 0's statistics
    job, as the connector asks) and of the job for each own model in ``models`` at its source
    installed here: approving a model pins its code, so a changed model is another request,
    pending until approved again."""
    shipped = {training_request().digest(), stats_request().digest()}
    return frozenset(shipped | {training_request(model=m).digest() for m in models})


@dataclass(frozen=True)
class Decision:
    """What the policy says about one code request."""

    approve: bool
    request_hash: str
    reason: str


class ApprovalPolicy:
    """Approve a code request only when its request hash is on the factory's allow-list."""

    def __init__(self, allow_list: Iterable[str]) -> None:
        hashes = set()
        for h in allow_list:
            if not isinstance(h, str) or not _HEX64.fullmatch(h.lower()):
                raise ConfigError(f"allow-list entry {h!r} is not a SHA-256 hex digest")
            hashes.add(h.lower())
        self.allow_list = frozenset(hashes)

    def decide(self, pieces: RequestPieces | None) -> Decision:
        """Approve iff the request's hash is allow-listed; anything else stays pending."""
        if not isinstance(pieces, RequestPieces):
            return Decision(False, "", "unreadable request")
        try:
            digest = pieces.digest()
        except ConfigError as exc:
            return Decision(False, "", f"unreadable code: {exc}")
        if digest in self.allow_list:
            return Decision(True, digest, "request hash is on the allow-list")
        return Decision(
            False,
            digest,
            "request hash is not on the allow-list (code, policies or bound assets differ)",
        )
