"""Robust aggregation rules behind one tiny interface, vectorised over the client axis."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from federation.errors import PrivacyError, RobustnessError
from federation.robust._distances import squared_distances
from federation.robust._order_stats import sorted_range_mean, weighted_row_sum
from federation.robust._tensors import (
    _cast,
    _flat_rows,
    _Spec,
    _spec_of,
    _stack,
    _unflatten,
    _weights,
    _work_dtype,
)

__all__ = [
    "Aggregator",
    "FedAvg",
    "TrimmedMean",
    "CoordinateMedian",
    "Krum",
    "MultiKrum",
    "CenteredClipping",
    "build_rule",
    "get_aggregator",
    "rule_parameters",
    "rule_spec",
    "AGGREGATORS",
    "trim_count",
    "trimmed_mean_rows",
    "median_rows",
    "krum_scores",
    "krum_scores_from_gram",
    "krum_select",
    "gram_matrix",
    "weighted_sum",
    "all_finite",
    "median_positions",
    "centered_clipping_rows",
    "row_distances",
]

Update = Mapping[str, torch.Tensor]


@runtime_checkable
class Aggregator(Protocol):
    """Combines client updates (same names and shapes) into one update.

    ``sensitivity(n, clip)`` is the L2 sensitivity to one clipped update (see the note above
    the classes); ``params()`` the parameters that rebuild the rule with ``build_rule``.
    """

    name: str

    def params(self) -> dict[str, Any]: ...

    def sensitivity(self, n: int, clip: float) -> float: ...

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


NON_FINITE = "an update contains NaN or Inf; screen updates before aggregating"


def all_finite(x: torch.Tensor) -> bool:
    """True when no element is NaN or infinite: one sum (any NaN/Inf makes it non-finite), and
    the element-wise check only when the sum itself overflowed."""
    if x.numel() == 0 or not x.dtype.is_floating_point:
        return True
    if math.isfinite(float(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def median_positions(n: int) -> tuple[int, int]:
    """Sorted positions [start, stop) whose mean is the median of n values."""
    return (n // 2, n // 2 + 1) if n % 2 else (n // 2 - 1, n // 2 + 1)


def _sorted_range_mean_rows(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Per column of a CPU [n, d] matrix: mean of the sorted values at positions [start, stop)."""
    work = x.detach()
    if work.dtype not in (torch.float32, torch.float64):
        work = work.to(torch.float32)
    rows = list(work.contiguous().numpy())
    vec, finite = sorted_range_mean(rows, start, stop)
    if not finite:
        raise RobustnessError(NON_FINITE)
    return torch.from_numpy(vec)


def trimmed_mean_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per coordinate: drop the k smallest and k largest rows, average the rest."""
    n = x.shape[0]
    if k <= 0:
        return x.mean(dim=0)
    if n - 2 * k < 1:
        raise RobustnessError(f"cannot trim {k} from each end of {n} rows")
    if x.device.type == "cpu":
        return _sorted_range_mean_rows(x, k, n - k).to(x.dtype)
    return torch.sort(x.t().contiguous(), dim=1).values[:, k : n - k].mean(dim=1)


def median_rows(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for even n the mean of the two middle values."""
    n = x.shape[0]
    if x.device.type == "cpu":
        return _sorted_range_mean_rows(x, *median_positions(n)).to(x.dtype)
    if n % 2:
        return torch.median(x, dim=0).values
    s = torch.sort(x.t().contiguous(), dim=1).values  # contiguous rows sort faster than dim 0
    return (s[:, n // 2 - 1] + s[:, n // 2]) / 2


def krum_scores(x: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score per row: sum of squared distances to its n - f - 2 nearest other rows."""
    return krum_scores_from_gram(x.double() @ x.double().T, f).to(x.dtype)


def krum_scores_from_gram(gram: torch.Tensor, f: int) -> torch.Tensor:
    """Krum scores from the rows' Gram matrix G (G_ij = <x_i, x_j>): |x_i - x_j|^2 = G_ii + G_jj - 2 G_ij."""
    n = gram.shape[0]
    k = n - f - 2
    if f < 0 or k < 1:
        raise RobustnessError(f"Krum with f={f} needs at least f + 3 = {f + 3} updates, got {n}")
    sq = gram.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0)
    d2.fill_diagonal_(float("inf"))
    return torch.sort(d2, dim=1).values[:, :k].sum(dim=1)


#: Bytes of the [n, block] slice stacked at a time for the Gram matrix (stays in cache).
GRAM_BLOCK_BYTES = 1 << 20


def gram_matrix(updates: Sequence[Update], spec: _Spec) -> torch.Tensor:
    """float64 Gram matrix of the flattened updates, built block by block (no [n, d] copy)."""
    n = len(updates)
    work = _work_dtype(spec.dtypes)
    gram = torch.zeros((n, n), dtype=torch.float64, device=spec.device)
    itemsize = torch.empty((), dtype=work).element_size()
    step = max(1, GRAM_BLOCK_BYTES // (n * itemsize))
    for name in spec.names:
        rows = _flat_rows(updates, name, work)
        for c0 in range(0, rows[0].numel(), step):
            block = torch.stack([r[c0 : c0 + step] for r in rows])
            gram += (block @ block.T).to(torch.float64)
    return gram


def krum_select(x: torch.Tensor, f: int, m: int = 1) -> torch.Tensor:
    """Indices of the m rows with the lowest Krum scores (Multi-Krum when m > 1)."""
    return _lowest(krum_scores(x, f), m)


def _lowest(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m lowest scores, ties in index order."""
    if m < 1:
        raise RobustnessError(f"Krum needs m >= 1, got {m}")
    return torch.argsort(scores, stable=True)[: min(m, scores.shape[0])]


def centered_clipping_rows(
    x: torch.Tensor, tau: float | None = None, iters: int = 3, center: torch.Tensor | None = None
) -> torch.Tensor:
    """Centered clipping (Karimireddy et al. 2021): v += mean_i clip_tau(x_i - v), ``iters`` times.

    Starts from ``center`` (e.g. last round's aggregate) or the coordinate median; ``tau=None``
    uses the median distance of the rows to that start.
    """
    v = median_rows(x) if center is None else center.to(x.dtype)
    if tau is None:
        tau = float(row_distances(x, v).median())
    if tau < 0 or iters < 1:
        raise RobustnessError(
            f"centered clipping needs tau >= 0 and iters >= 1, got {tau}, {iters}"
        )
    n = x.shape[0]
    for _ in range(iters):
        scale = torch.clamp(tau / row_distances(x, v).clamp_min(1e-12), max=1.0)
        # v + mean_i s_i (x_i - v) = v (1 - mean(s)) + (s @ x) / n: one pass over x, no [n, d] diff
        v = v * (1.0 - float(scale.mean())) + (scale.to(x.dtype) @ x) / n
    return v


#: Bytes of the [n, block] difference formed at a time by ``row_distances`` off the CPU.
DISTANCE_BLOCK_BYTES = 1 << 22


def row_distances(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 L2 distance of each row of ``x`` to ``v``, without an [n, d] temporary."""
    n, d = x.shape
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        sq = squared_distances(x.detach().numpy(), v.detach().to(x.dtype).numpy())
        return torch.from_numpy(sq).sqrt()
    step = max(1, DISTANCE_BLOCK_BYTES // max(1, n * x.element_size()))
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    for c0 in range(0, d, step):
        diff = x[:, c0 : c0 + step] - v[c0 : c0 + step]
        sq += torch.linalg.vector_norm(diff, dim=1, dtype=torch.float64).square()
    return sq.sqrt()


def _finite_matrix(updates: Sequence[Update]):
    x, spec = _stack(updates)
    if not all_finite(x):
        raise RobustnessError(NON_FINITE)
    return x, spec


#: Tensors at least this large are summed by the compiled one-pass kernel (weighted_row_sum).
FUSED_SUM_MIN_ELEMENTS = 1 << 18


def weighted_sum(
    updates: Sequence[Update], w: Sequence[float], spec: _Spec
) -> dict[str, torch.Tensor]:
    """Sum of w_i * update_i per tensor (no [n, d] matrix); checked finite. A large CPU tensor
    is summed by compiled passes that read each input once (one pass per REGISTER_MAX_N terms);
    otherwise the sum accumulates in place, term by term.

    A NaN/Inf in any input with a non-zero weight makes the sum non-finite, so checking the
    result alone keeps the guarantee.
    """
    terms = [(u, float(wi)) for u, wi in zip(updates, w, strict=True) if wi != 0.0]
    out: dict[str, torch.Tensor] = {}
    for name, shape, dtype in zip(spec.names, spec.shapes, spec.dtypes, strict=True):
        work = torch.float64 if dtype == torch.float64 else torch.float32
        # one compiled pass for a large tensor: n loads and one store per coordinate (handing the
        # rows to the kernel costs ~50 us, more than in-place adds save on a small tensor)
        if spec.device.type == "cpu" and shape.numel() >= FUSED_SUM_MIN_ELEMENTS:
            rows = [t.numpy() for t in _flat_rows([u for u, _ in terms], name, work)]
            summed = weighted_row_sum(rows, [wi for _, wi in terms])
            if summed is not None:
                vec, finite = summed
                if not finite:
                    raise RobustnessError(NON_FINITE)
                out[name] = _cast(torch.from_numpy(vec).reshape(shape), dtype)
                continue
        (u0, w0), rest = terms[0], terms[1:]
        acc = torch.mul(u0[name].detach().to(work), w0)  # a fresh tensor: no zero-fill pass
        for u, wi in rest:
            t = u[name]
            acc.add_(
                t if t.dtype == work and not t.requires_grad else t.detach().to(work), alpha=wi
            )
        if not all_finite(acc):
            raise RobustnessError(NON_FINITE)
        out[name] = _cast(acc, dtype)
    return out


def _order_statistic(updates: Sequence[Update], positions) -> dict[str, torch.Tensor] | None:
    """Per tensor and coordinate: the mean of the sorted values at ``positions(n)`` (None off CPU)."""
    spec = _spec_of(updates)
    if spec.device.type != "cpu":
        return None
    start, stop = positions(len(updates))
    work = _work_dtype(spec.dtypes)
    out: dict[str, torch.Tensor] = {}
    for name, shape, dtype in zip(spec.names, spec.shapes, spec.dtypes, strict=True):
        rows = [r.numpy() for r in _flat_rows(updates, name, work)]
        vec, finite = sorted_range_mean(rows, start, stop)
        if not finite:
            raise RobustnessError(NON_FINITE)
        out[name] = _cast(torch.from_numpy(vec).reshape(shape), dtype)
    return out


# --- the Aggregator classes ---------------------------------------------------
#
# Every rule states ``sensitivity(n, clip)``: the largest L2 change of its output when one of n
# clipped updates (L2 norm <= clip) is replaced by the zero update and n stays the same
# ("zero-out" adjacency). That is the adjacency under which the client-level accountant's
# Gaussian mechanism (std = noise_multiplier x sensitivity, every client every round) gives its
# epsilon. Weights are not part of the bound: under central DP every rule runs unweighted.
# A rule with no sound bound raises PrivacyError, so central DP refuses it.


def _order_statistic_sensitivity(n: int, clip: float, start: int, stop: int) -> float:
    """Sensitivity of "per coordinate, the mean of the sorted values at [start, stop)".

    Sorting is a contraction in L1 (|sort(x) - sort(x')|_1 <= |x - x'|_1), so replacing one
    value per coordinate by v_j changes the sum of any block of order statistics by at most
    |v_j|, and their mean by |v_j| / (stop - start). Over all coordinates the change is at most
    |v|_2 / (stop - start) <= clip / (stop - start). The bound is reached: k updates at +C e1,
    k at -C e1, the rest 0, and the moved one at C e1 (k = start = n - stop).
    """
    return float(clip) / (stop - start)


def _check_n_clip(n: int, clip: float) -> None:
    if not isinstance(n, int) or n < 1:
        raise RobustnessError(f"sensitivity needs a cohort of n >= 1 updates, got {n!r}")
    if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
        raise RobustnessError(f"sensitivity needs a positive finite clip norm, got {clip!r}")


class FedAvg:
    """Weighted mean (weights are e.g. sample counts; equal when None)."""

    name = "fedavg"

    def params(self) -> dict[str, Any]:
        return {}

    def sensitivity(self, n: int, clip: float) -> float:
        """clip / n: the unweighted mean of n updates moves by |v| / n when one becomes v."""
        _check_n_clip(n, clip)
        return float(clip) / n

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        spec = _spec_of(updates)
        return weighted_sum(updates, _weights(weights, len(updates)), spec)


class TrimmedMean:
    """Coordinate-wise trimmed mean; below ``min_clients``, where nothing is trimmed, the weighted
    mean (FedAvg, the plain mean when unweighted). Weights are ignored when rows are trimmed."""

    name = "trimmed_mean"

    def __init__(self, trim_ratio: float = 0.1, min_clients: int = 5) -> None:
        trim_count(10, trim_ratio)  # validates the ratio
        if not isinstance(min_clients, int) or isinstance(min_clients, bool) or min_clients < 1:
            raise RobustnessError(f"trimmed mean needs min_clients >= 1, got {min_clients!r}")
        self.trim_ratio = float(trim_ratio)
        self.min_clients = int(min_clients)

    def params(self) -> dict[str, Any]:
        return {"trim_ratio": self.trim_ratio, "min_clients": self.min_clients}

    def trimmed(self, n: int) -> int:
        """Rows dropped from each end for a cohort of n: ceil(n x trim_ratio), none below min_clients."""
        return trim_count(n, self.trim_ratio) if n >= self.min_clients else 0

    def sensitivity(self, n: int, clip: float) -> float:
        """clip / (n - 2k) with k = ``trimmed(n)``, the rows the rule really drops (see
        ``_order_statistic_sensitivity``); clip / n below ``min_clients``."""
        _check_n_clip(n, clip)
        k = self.trimmed(n)
        return _order_statistic_sensitivity(n, clip, k, n - k)

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        k = self.trimmed(len(updates))
        if k == 0 and weights is not None:
            return FedAvg().aggregate(updates, weights)
        out = _order_statistic(updates, lambda n: (k, n - k))
        if out is not None:
            return out
        x, spec = _finite_matrix(updates)
        return _unflatten(trimmed_mean_rows(x, k), spec)


class CoordinateMedian:
    """Coordinate-wise median. Weights are ignored."""

    name = "median"

    def params(self) -> dict[str, Any]:
        return {}

    def sensitivity(self, n: int, clip: float) -> float:
        """clip for odd n, clip / 2 for even n: the median is the mean of the sorted values at
        ``median_positions(n)`` (see ``_order_statistic_sensitivity``)."""
        _check_n_clip(n, clip)
        return _order_statistic_sensitivity(n, clip, *median_positions(n))

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        out = _order_statistic(updates, median_positions)
        if out is not None:
            return out
        x, spec = _finite_matrix(updates)
        return _unflatten(median_rows(x), spec)


class Krum:
    """Krum (Blanchard et al. 2017) for m = 1, Multi-Krum (mean of the m best) for m > 1. Weights are ignored.

    Needs n >= f + 3 updates to compute a score; its guarantee needs n > 2f + 2.
    """

    name = "krum"

    def __init__(self, f: int = 1, m: int = 1) -> None:
        for label, value, low in (("f", f, 0), ("m", m, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise RobustnessError(f"Krum needs an int {label} >= {low}, got {value!r}")
        self.f = int(f)
        self.m = int(m)
        self.last_selected: list[int] = []

    def params(self) -> dict[str, Any]:
        return {"f": self.f, "m": self.m}

    def sensitivity(self, n: int, clip: float) -> float:
        """2 x clip: the output is the mean of selected clipped updates, so it lies in the ball of
        radius clip on both sides; one update can flip the whole selection (two clusters at -C
        and +C, the moved update tipping the scores), so no smaller bound holds for all cohorts."""
        _check_n_clip(n, clip)
        return 2.0 * float(clip)

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        spec = _spec_of(updates)
        gram = gram_matrix(updates, spec)
        if not all_finite(gram.diagonal()):  # |x_i|^2 is NaN/Inf iff x_i is, or it overflowed
            if not all(all_finite(t) for u in updates for t in u.values()):
                raise RobustnessError(NON_FINITE)
            x, _ = _stack(updates)
            gram = x.double() @ x.double().T
        idx = _lowest(krum_scores_from_gram(gram, self.f), self.m)
        self.last_selected = [int(i) for i in idx]
        w = [0.0] * len(updates)
        for i in self.last_selected:
            w[i] = 1.0 / len(self.last_selected)
        return weighted_sum(updates, w, spec)


class MultiKrum(Krum):
    """Multi-Krum: the mean of the m updates with the lowest Krum scores (m = 3 unless set)."""

    name = "multi_krum"

    def __init__(self, f: int = 1, m: int = 3) -> None:
        super().__init__(f=f, m=m)


class CenteredClipping:
    """Centered clipping around a robust start (coordinate median); ``tau=None`` adapts to the spread. Weights are ignored."""

    name = "centered_clipping"

    def __init__(self, tau: float | None = None, iters: int = 3) -> None:
        if (tau is not None and not (isinstance(tau, int | float) and tau >= 0)) or iters < 1:
            raise RobustnessError(
                f"centered clipping needs tau >= 0 and iters >= 1, got {tau}, {iters}"
            )
        self.tau = None if tau is None else float(tau)
        self.iters = int(iters)

    def params(self) -> dict[str, Any]:
        return {"tau": self.tau, "iters": self.iters}

    def sensitivity(self, n: int, clip: float) -> float:
        """median's sensitivity + iters x min(clip, 2 tau) / n, for a fixed ``tau`` only.

        One step is v' = mean_i (x_i - r(x_i - v)) with r(u) = u - clip_tau(u), the residual of
        a projection, which is 1-Lipschitz: two neighbouring runs drift apart by no more than
        they started (the median start) plus, per step, the moved update's own term
        (v + clip_tau(x_j - v)) / n, which changes by at most min(|x_j|, 2 tau) / n. With an
        adaptive tau (None) the radius itself depends on every update: no sound bound, so
        central DP refuses the rule.
        """
        _check_n_clip(n, clip)
        if self.tau is None:
            raise PrivacyError(
                "centered_clipping with an adaptive tau has no bounded sensitivity; set a fixed "
                "tau to use it under central DP"
            )
        step = min(float(clip), 2.0 * self.tau) / n
        return CoordinateMedian().sensitivity(n, clip) + self.iters * step

    def aggregate(self, updates: Sequence[Update], weights: Sequence[float] | None = None):
        x, spec = _finite_matrix(updates)
        return _unflatten(centered_clipping_rows(x, self.tau, self.iters), spec)


#: The rules by configuration name.
AGGREGATORS: dict[str, type] = {
    "fedavg": FedAvg,
    "trimmed_mean": TrimmedMean,
    "median": CoordinateMedian,
    "krum": Krum,
    "multi_krum": MultiKrum,
    "centered_clipping": CenteredClipping,
}


def rule_parameters(name: str) -> dict[str, Any]:
    """The parameters a rule accepts and their defaults (from its constructor)."""
    cls = AGGREGATORS[_rule_key(name)]
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def _rule_key(name: Any) -> str:
    key = str(name).lower().replace("-", "_")
    if key not in AGGREGATORS:
        raise RobustnessError(
            f"unknown aggregation rule {name!r}; choose one of {sorted(AGGREGATORS)}"
        )
    return key


def build_rule(spec: str | Mapping[str, Any] | Aggregator) -> Aggregator:
    """A rule from its configuration: a name (``"median"``) or a mapping with the name and its
    parameters (``{"name": "multi_krum", "f": 2, "m": 5}``); an Aggregator passes through.
    Unknown names and parameters are a RobustnessError that lists what is accepted."""
    if hasattr(spec, "aggregate") and not isinstance(spec, str | Mapping):
        return spec  # already a rule
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise RobustnessError(f"a rule is a name or a mapping with 'name', got {spec!r}")
    key = _rule_key(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    accepted = rule_parameters(key)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise RobustnessError(
            f"rule {key!r} has no parameter {', '.join(unknown)}; it accepts {sorted(accepted) or 'none'}"
        )
    return AGGREGATORS[key](**params)


def rule_spec(rule: Aggregator) -> dict[str, Any]:
    """The configuration that rebuilds ``rule``: its name and parameters."""
    return {"name": rule.name, **rule.params()}


def get_aggregator(name: str, **kwargs) -> Aggregator:
    """Build an aggregator by name and keyword parameters (see ``build_rule``)."""
    return build_rule({"name": name, **kwargs})
