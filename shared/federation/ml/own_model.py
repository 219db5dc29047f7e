"""A campaign's own model: a ``package.module:function`` entry point, resolved and hashed locally."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from federation.ml.models import ModelConfigError

__all__ = [
    "ENTRY_POINT",
    "build_own_model",
    "check_campaign_model",
    "is_entry_point",
    "package_digest",
    "resolve_builder",
    "source_digest",
]

#: ``package.module:function``: dotted module path, a colon, one function name.
ENTRY_POINT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_DOMAIN = b"pdmfed-model-source-v1\x00"


def is_entry_point(kind: object) -> bool:
    """Whether ``kind`` is spelled as a model entry point (not whether it resolves)."""
    return isinstance(kind, str) and ENTRY_POINT.fullmatch(kind) is not None


def _split(entry_point: str) -> tuple[str, str]:
    if not is_entry_point(entry_point):
        raise ModelConfigError(
            f"model {entry_point!r} is neither a built-in nor a 'package.module:function' entry point"
        )
    module, _, attr = entry_point.partition(":")
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("federation", "services", "torch", "syft"):
        raise ModelConfigError(
            f"model {entry_point!r}: {top!r} is not a model package (the standard library, torch, "
            "syft and pdm-federation itself cannot be named as a model)"
        )
    return module, attr


def _import(module: str, entry_point: str):  # noqa: ANN202
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelConfigError(
            f"model {entry_point!r}: its package is not installed here ({exc}); install it "
            "(pip install) wherever the campaign runs: orchestrator services and each factory"
        ) from exc


def resolve_builder(entry_point: str) -> Callable[[int, int], nn.Module]:
    """The function ``entry_point`` names; it must be a Python function defined in that module."""
    module_name, attr = _split(entry_point)
    module = _import(module_name, entry_point)
    builder = getattr(module, attr, None)
    if not inspect.isfunction(builder) or builder.__module__ != module.__name__:
        raise ModelConfigError(
            f"model {entry_point!r}: {attr!r} is not a function defined in {module_name}"
        )
    return builder


def build_own_model(entry_point: str, n_features: int, window: int) -> nn.Module:
    """Call the builder with (n_features, window); it must return an ``nn.Module``."""
    builder = resolve_builder(entry_point)
    try:
        model = builder(n_features, window)
    except Exception as exc:
        raise ModelConfigError(
            f"model {entry_point!r} failed to build for n_features={n_features}, "
            f"window={window}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelConfigError(
            f"model {entry_point!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def package_digest(root: Path) -> str:
    """SHA-256 over every ``*.py`` file under a package directory (or of one module file).

    Each file contributes its path relative to ``root`` and its bytes, in sorted order, so a
    renamed, added, removed or edited file changes the digest.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.py") if p.is_file())
    if not files:
        raise ModelConfigError(f"no Python source under {root}")
    h = hashlib.sha256(_DOMAIN)
    for path in files:
        rel = path.name if path == root else path.relative_to(root).as_posix()
        data = path.read_bytes()
        h.update(rel.encode("utf-8") + b"\x00" + str(len(data)).encode() + b"\x00" + data)
    return h.hexdigest()


def source_digest(entry_point: str) -> str:
    """The digest of the installed source of the model's top-level package (see package_digest).

    The whole top-level package is covered, not only the named module: a helper module it
    imports from its own package is part of what a factory approves.
    """
    module_name, _ = _split(entry_point)
    top = _import(module_name.split(".")[0], entry_point)
    paths = list(getattr(top, "__path__", None) or [])
    if paths:
        if len(paths) != 1:
            raise ModelConfigError(f"model {entry_point!r}: namespace packages cannot be hashed")
        return package_digest(Path(paths[0]))
    file = getattr(top, "__file__", None)
    if not file or not str(file).endswith(".py"):
        raise ModelConfigError(f"model {entry_point!r}: its package has no Python source to hash")
    return package_digest(Path(file))


def check_campaign_model(model_type: str, n_features: int, window: int, *, record_dp: bool) -> None:
    """ConfigError (one line: which model, why) unless the campaign's model can train here.

    The model must build for (n_features, window) and return one RUL per window; under
    record-level DP-SGD its per-sample gradients must be correct
    (``federation.privacy.dp_support``). Run before a campaign starts, so a model that cannot
    train privately is refused before any factory trains.
    """
    import torch

    from federation.errors import ConfigError, PrivacyError
    from federation.ml.models import build_model
    from federation.privacy.dp_support import check_dpsgd_support

    try:
        with torch.random.fork_rng(devices=[]):
            model = build_model(model_type, n_features, window)
            with torch.no_grad():
                out = model(torch.zeros((2, window, n_features)))
    except ModelConfigError as exc:
        raise ConfigError(f"campaign refused: {exc}") from exc
    except Exception as exc:
        raise ConfigError(
            f"campaign refused: model {model_type!r} fails on a (2, {window}, {n_features}) "
            f"batch: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"campaign refused: model {model_type!r} must return one RUL per window, shape "
            f"(batch,), got {shape} for a batch of 2"
        )
    if record_dp:
        try:
            check_dpsgd_support(model, n_features, window)
        except PrivacyError as exc:
            raise ConfigError(
                f"campaign refused: model {model_type!r} cannot train under record-level "
                f"DP-SGD: {exc}"
            ) from exc
