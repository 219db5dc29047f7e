"""Flatten a list of state-dict updates into one [n, d] matrix and back (shared by aggregators and detectors)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from federation.errors import RobustnessError


@dataclass(frozen=True)
class _Spec:
    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    device: torch.device


def _work_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _spec_of(updates: Sequence[Mapping[str, torch.Tensor]]) -> _Spec:
    """Names, shapes and dtypes of update 0, after checking every update has the same ones."""
    if not isinstance(updates, Sequence) or len(updates) == 0:
        raise RobustnessError("need at least one update")
    first = updates[0]
    if not isinstance(first, Mapping) or not first:
        raise RobustnessError("an update must be a non-empty mapping of name -> tensor")
    names = tuple(first.keys())
    for name in names:
        if not isinstance(first[name], torch.Tensor):
            raise RobustnessError(f"update 0 entry {name!r} is not a torch.Tensor")
    shapes = tuple(first[n].shape for n in names)
    pairs = tuple(zip(names, shapes, strict=True))
    keys = first.keys()
    for i, u in enumerate(updates):
        # a plain dict skips the slower ABC isinstance check; key views compare as sets
        if not (type(u) is dict or isinstance(u, Mapping)) or u.keys() != keys:
            raise RobustnessError(f"update {i} does not have the same parameter names as update 0")
        for name, shape in pairs:
            t = u[name]
            if not isinstance(t, torch.Tensor) or t.shape != shape:
                got = getattr(t, "shape", type(t).__name__)
                raise RobustnessError(
                    f"update {i} entry {name!r} has shape {got}, expected {tuple(shape)}"
                )
    dtypes = tuple(first[n].dtype for n in names)
    return _Spec(names, shapes, dtypes, first[names[0]].device)


def _stack(updates: Sequence[Mapping[str, torch.Tensor]]) -> tuple[torch.Tensor, _Spec]:
    """Stack updates as rows of one matrix; every update must have the same names and shapes."""
    spec = _spec_of(updates)
    sizes = [shape.numel() for shape in spec.shapes]
    # one preallocated [n, d] matrix, each tensor copied straight into its slice (no cat/stack copies)
    out = torch.empty(
        (len(updates), sum(sizes)), dtype=_work_dtype(spec.dtypes), device=spec.device
    )
    for i, u in enumerate(updates):
        offset = 0
        for name, size in zip(spec.names, sizes, strict=True):
            out[i, offset : offset + size].copy_(u[name].detach().reshape(-1))
            offset += size
    return out, spec


def _flat_rows(
    updates: Sequence[Mapping[str, torch.Tensor]], name: str, work: torch.dtype
) -> list[torch.Tensor]:
    """Every update's ``name`` tensor as a flat ``work``-dtype row (a view when it already is one)."""
    return [u[name].detach().reshape(-1).to(work) for u in updates]


def _unflatten(vec: torch.Tensor, spec: _Spec) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape, dtype in zip(spec.names, spec.shapes, spec.dtypes, strict=True):
        size = shape.numel()
        out[name] = _cast(vec[offset : offset + size].reshape(shape), dtype).clone()
        offset += size
    return out


def _cast(vec: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``vec`` as ``dtype``, rounded first when that is an integer type."""
    if not (dtype.is_floating_point or dtype.is_complex):
        vec = vec.round()
    return vec.to(dtype)


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Normalised non-negative weights (equal when None), as plain floats."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise RobustnessError(f"got {len(weights)} weights for {n} updates")
    w = [float(x) for x in weights]
    total = math.fsum(w)
    if not all(math.isfinite(x) and x >= 0 for x in w) or not math.isfinite(total) or total <= 0:
        raise RobustnessError("weights must be finite, non-negative and not all zero")
    return [x / total for x in w]
