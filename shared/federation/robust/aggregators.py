"""Robust aggregation rules behind one tiny interface, vectorised over the client axis."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from federation.errors import RobustnessError
from federation.robust._tensors import _stack, _unflatten, _weights

__all__ = [
    "Aggregator",
    "FedAvg",
    "TrimmedMean",
    "CoordinateMedian",
    "Krum",
    "CenteredClipping",
    "get_aggregator",
    "AGGREGATORS",
    "trim_count",
    "trimmed_mean_rows",
    "median_rows",
    "krum_scores",
    "krum_select",
    "centered_clipping_rows",
]

Update = Mapping[str, torch.Tensor]


@runtime_checkable
class Aggregator(Protocol):
    """Combines client updates (same names and shapes) into one update."""

    def aggregate(
        self, updates: Sequence[Update], weights: Sequence[float] | None = None
    ) -> dict[str, torch.Tensor]: ...


# --- pure functions on an [n, d] matrix (rows = clients) ----------------------
def trim_count(n: int, trim_ratio: float) -> int:
    """Rows trimmed from each end: ceil(n * trim_ratio), so a ratio > 0 always trims, leaving >= 1 row."""
    if not (0 <= trim_ratio < 0.5):
        raise RobustnessError(f"trim_ratio must be in [0, 0.5), got {trim_ratio}")
    k = math.ceil(n * trim_ratio - 1e-9)
    return max(0, min(k, (n - 1) // 2))


def trimmed_mean_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per coordinate: drop the k smallest and k largest rows, average the rest."""
    n = x.shape[0]
    if k <= 0:
        return x.mean(dim=0)
    if n - 2 * k < 1:
        raise RobustnessError(f"cannot trim {k} from each end of {n} rows")
    if k == 1:  # one from each end: max/min reduce along the client axis, no sort at all
        return (x.sum(dim=0) - x.max(dim=0).values - x.min(dim=0).values) / (n - 2)
    if 4 * k <= n:
        # few trimmed: subtract the k largest and k smallest (topk) instead of sorting everything
        xt = x.t().contiguous()  # per-coordinate rows are contiguous: topk/sort run much faster
        top = torch.topk(xt, k, dim=1).values.sum(dim=1)
        bottom = torch.topk(xt, k, dim=1, largest=False).values.sum(dim=1)
        return (xt.sum(dim=1) - top - bottom) / (n - 2 * k)
    return torch.sort(x.t().contiguous(), dim=1).values[:, k : n - k].mean(dim=1)


def median_rows(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for even n the mean of the two middle values."""
    n = x.shape[0]
    if x.device.type == "cpu":
        # numpy's introselect partition beats a full torch.sort on CPU (same result)
        return torch.from_numpy(np.median(x.numpy(), axis=0)).to(x.dtype)
    if n % 2:
        return torch.median(x, dim=0).values
    s = torch.sort(x.t().contiguous(), dim=1).values  # contiguous rows sort faster than dim 0
    return (s[:, n // 2 - 1] + s[:, n // 2]) / 2


def krum_scores(x: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score per row: sum of squared distances to its n - f - 2 nearest other rows."""
    n = x.shape[0]
    k = n - f - 2
    if f < 0 or k < 1:
        raise RobustnessError(f"Krum with f={f} needs at least f + 3 = {f + 3} updates, got {n}")
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0)
    d2.fill_diagonal_(float("inf"))
    return torch.sort(d2, dim=1).values[:, :k].sum(dim=1)


def krum_select(x: torch.Tensor, f: int, m: int = 1) -> torch.Tensor:
    """Indices of the m rows with the lowest Krum scores (Multi-Krum when m > 1)."""
    if m < 1:
        raise RobustnessError(f"Krum needs m >= 1, got {m}")
    scores = krum_scores(x, f)
    return torch.argsort(scores, stable=True)[: min(m, x.shape[0])]


def centered_clipping_rows(
    x: torch.Tensor, tau: float | None = None, iters: int = 3, center: torch.Tensor | None = None
) -> torch.Tensor:
    """Centered clipping (Karimireddy et al. 2021): v += mean_i clip_tau(x_i - v), ``iters`` times.

    Starts from ``center`` (e.g. last round's aggregate) or the coordinate median; ``tau=None``
    uses the median distance of the rows to that start.
    """
    v = median_rows(x) if center is None else center.to(x.dtype)
    if tau is None:
        tau = float(torch.linalg.vector_norm(x - v, dim=1).median())
    if tau < 0 or iters < 1:
        raise RobustnessError(
            f"centered clipping needs tau >= 0 and iters >= 1, got {tau}, {iters}"
        )
    for _ in range(iters):
        diff = x - v
        norms = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
        scale = torch.clamp(tau / norms.clamp_min(1e-12), max=1.0)
        v = v + (diff * scale).mean(dim=0)
    return v


def _finite_matrix(updates: Sequence[Update]):
    x, spec = _stack(updates)
    if not torch.isfinite(x).all():
        raise RobustnessError("an update contains NaN or Inf; screen updates before aggregating")
    return x, spec


# --- the Aggregator classes ---------------------------------------------------
class FedAvg:
    """Weighted mean (weights are e.g. sample counts; equal when None)."""

    name = "fedavg"

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        if len(updates) == 0:
            raise RobustnessError("need at least one update")
        first = updates[0]
        for i, u in enumerate(updates):
            if not isinstance(u, Mapping) or set(u) != set(first):
                raise RobustnessError(f"update {i} does not have the same parameter names as update 0")
        # Accumulate per tensor: no [n, d] matrix. A NaN/Inf in any input makes the sum
        # non-finite, so checking the result alone keeps the same guarantee.
        w = _weights(weights, len(updates), torch.empty(0, dtype=torch.float64))
        out: dict[str, torch.Tensor] = {}
        for name, ref in first.items():
            if not isinstance(ref, torch.Tensor):
                raise RobustnessError(f"update 0 entry {name!r} is not a torch.Tensor")
            work = torch.float64 if ref.dtype == torch.float64 else torch.float32
            acc = torch.zeros(ref.shape, dtype=work, device=ref.device)
            for i, u in enumerate(updates):
                t = u[name]
                if not isinstance(t, torch.Tensor) or t.shape != ref.shape:
                    raise RobustnessError(f"update {i} entry {name!r} has shape "
                                          f"{getattr(t, 'shape', type(t).__name__)}, expected {tuple(ref.shape)}")
                acc.add_(t.detach().to(work), alpha=float(w[i]))
            if not torch.isfinite(acc).all():
                raise RobustnessError("an update contains NaN or Inf; screen updates before aggregating")
            out[name] = acc.round().to(ref.dtype) if not ref.dtype.is_floating_point else acc.to(ref.dtype)
        return out


class TrimmedMean:
    """Coordinate-wise trimmed mean; plain mean below ``min_clients`` (the seed's fallback). Weights are ignored."""

    name = "trimmed_mean"

    def __init__(self, trim_ratio: float = 0.1, min_clients: int = 5) -> None:
        trim_count(10, trim_ratio)  # validates the ratio
        self.trim_ratio = float(trim_ratio)
        self.min_clients = int(min_clients)

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        x, spec = _finite_matrix(updates)
        n = x.shape[0]
        k = trim_count(n, self.trim_ratio) if n >= self.min_clients else 0
        return _unflatten(trimmed_mean_rows(x, k), spec)


class CoordinateMedian:
    """Coordinate-wise median. Weights are ignored."""

    name = "median"

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        x, spec = _finite_matrix(updates)
        return _unflatten(median_rows(x), spec)


class Krum:
    """Krum (Blanchard et al. 2017) for m = 1, Multi-Krum (mean of the m best) for m > 1. Weights are ignored.

    Needs n >= f + 3 updates to compute a score; its guarantee needs n > 2f + 2.
    """

    name = "krum"

    def __init__(self, f: int = 1, m: int = 1) -> None:
        if f < 0 or m < 1:
            raise RobustnessError(f"Krum needs f >= 0 and m >= 1, got f={f}, m={m}")
        self.f = int(f)
        self.m = int(m)
        self.last_selected: list[int] = []

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        x, spec = _finite_matrix(updates)
        idx = krum_select(x, self.f, self.m)
        self.last_selected = [int(i) for i in idx]
        return _unflatten(x[idx].mean(dim=0), spec)


class CenteredClipping:
    """Centered clipping around a robust start (coordinate median); ``tau=None`` adapts to the spread. Weights are ignored."""

    name = "centered_clipping"

    def __init__(self, tau: float | None = None, iters: int = 3) -> None:
        if (tau is not None and tau < 0) or iters < 1:
            raise RobustnessError(
                f"centered clipping needs tau >= 0 and iters >= 1, got {tau}, {iters}"
            )
        self.tau = tau
        self.iters = int(iters)

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        x, spec = _finite_matrix(updates)
        return _unflatten(centered_clipping_rows(x, self.tau, self.iters), spec)


AGGREGATORS: dict[str, type] = {
    "fedavg": FedAvg,
    "mean": FedAvg,
    "trimmed_mean": TrimmedMean,
    "median": CoordinateMedian,
    "coordinate_median": CoordinateMedian,
    "krum": Krum,
    "multi_krum": Krum,
    "centered_clipping": CenteredClipping,
}


def get_aggregator(name: str, **kwargs) -> Aggregator:
    """Build an aggregator by name (see AGGREGATORS); ``multi_krum`` defaults to m = 3."""
    key = str(name).lower().replace("-", "_")
    if key not in AGGREGATORS:
        raise RobustnessError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
    if key == "multi_krum":
        kwargs.setdefault("m", 3)
    try:
        return AGGREGATORS[key](**kwargs)
    except TypeError as exc:
        raise RobustnessError(f"bad arguments for aggregator {name!r}: {exc}") from exc
