"""Federated normalisation statistics: per-regime, per-sensor exact count, sum and sum of squares."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from federation.ml.data import DatasetError, Normalizer, regime_ids

__all__ = [
    "STATS_VERSION",
    "SINGLE_REGIME",
    "SensorStats",
    "StatisticsError",
    "merge_stats",
    "named_normalizer",
    "window_rows",
    "window_stats",
]

STATS_VERSION = 1
#: The regime key of statistics that pool every operating regime (windows carry no settings).
SINGLE_REGIME: tuple[float, ...] = (0.0,)
#: Every float32 is an integer multiple of 2**-149 (its smallest subnormal): sums are kept as
#: exact integers in that unit, squares in its square, so merging is exact in any order.
_SCALE = 149
_CHUNK = 1 << 20  # int64 partial sums stay exact: mantissa pieces < 2**25, chunks < 2**21 values
_HALF = 12  # a float32 mantissa (24 bits) split in two 12-bit halves for exact squares
#: The largest float32, (2**24 - 1) * 2**104, in units of 2**-149: no honest value exceeds it.
_MAX_UNITS = ((1 << 24) - 1) << (104 + _SCALE)
#: More rows than any partition holds: a count beyond it is a lie, not a dataset.
MAX_COUNT = 1 << 53


class StatisticsError(DatasetError):
    """A factory's round-0 statistics that no honest partition can produce (rejected, counted)."""

    reason = "invalid_stats"


def _exact_sums(column: np.ndarray) -> tuple[int, int]:
    """(sum, sum of squares) of float32 values as exact integers in units of 2**-149 / 2**-298."""
    x = np.asarray(column, dtype=np.float32).astype(np.float64)
    mant, exp = np.frexp(x)  # x = mant * 2**exp, |mant| in [0.5, 1) or 0
    m = (mant * (1 << 24)).astype(np.int64)  # exact: a float32 has a 24-bit significand
    e = exp.astype(np.int64) - 24 + _SCALE  # x = m * 2**(e - 149)
    low = e < 0  # subnormal float32: m carries trailing zero bits, moved into e
    m[low], e[low] = m[low] >> -e[low], 0
    total, squares = 0, 0
    for shift in np.unique(e):
        sel = m[e == shift]
        hi, lo = sel >> _HALF, sel & ((1 << _HALF) - 1)  # m = hi * 2**12 + lo (floor for m < 0)
        s = sq_hh = sq_hl = sq_ll = 0
        for i in range(0, sel.shape[0], _CHUNK):
            h, low = hi[i : i + _CHUNK], lo[i : i + _CHUNK]
            s += int(sel[i : i + _CHUNK].sum())
            sq_hh += int((h * h).sum())
            sq_hl += int((h * low).sum())
            sq_ll += int((low * low).sum())
        sh = int(shift)
        total += s << sh
        squares += ((sq_hh << (2 * _HALF)) + (sq_hl << (_HALF + 1)) + sq_ll) << (2 * sh)
    return total, squares


@dataclass
class SensorStats:
    """Count, sum and sum of squares per operating regime and sensor, exactly (integers).

    Sums are integers in units of 2**-149 (squares: 2**-298), so statistics of disjoint
    partitions merge by plain addition to exactly the statistics of their union, whatever the
    split or order; mean and std are then computed once, exactly rounded.
    """

    columns: tuple[str, ...] = ()
    #: regime key -> (count, per-column sums, per-column sums of squares)
    regimes: dict[tuple[float, ...], tuple[int, list[int], list[int]]] = field(default_factory=dict)
    #: decimals the regime keys were rounded to ([] = one pooled regime, settings ignored)
    decimals: list[int] | None = field(default_factory=list)

    # --- building --------------------------------------------------------------------------
    @classmethod
    def of_rows(
        cls,
        values: np.ndarray,
        columns: Sequence[str],
        settings: np.ndarray | None = None,
        decimals: Sequence[int] | None = None,
    ) -> SensorStats:
        """Statistics of rows (n, F); per regime of ``settings`` when given, else pooled."""
        x = np.asarray(values, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(columns):
            raise DatasetError(f"statistics need rows (n, {len(columns)}), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DatasetError("statistics over non-finite sensor values")
        if settings is None:
            keys = np.zeros((x.shape[0], 1))
            dec: list[int] | None = []
        else:
            keys = regime_ids(settings, decimals)
            dec = None if decimals is None else [int(d) for d in decimals]
        out = cls(tuple(columns), {}, dec)
        if x.shape[0] == 0:
            return out
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")  # each regime's rows together, one sort
        counts = np.bincount(inverse, minlength=len(uniq))
        for key, end, count in zip(uniq, np.cumsum(counts), counts, strict=True):
            rows = x[order[end - count : end]]
            sums, squares = zip(*(_exact_sums(rows[:, j]) for j in range(x.shape[1])), strict=True)
            out.regimes[tuple(float(v) for v in key)] = (
                int(rows.shape[0]),
                list(sums),
                list(squares),
            )
        return out

    def merge(self, other: SensorStats) -> SensorStats:
        """The statistics of both partitions together (exact; columns and regimes must agree)."""
        if tuple(other.columns) != tuple(self.columns):
            raise DatasetError(f"statistics over {list(other.columns)} cannot merge with "
                               f"{list(self.columns)}")  # fmt: skip
        if other.decimals != self.decimals and other.regimes and self.regimes:
            raise DatasetError("statistics with different regime roundings cannot merge")
        regimes = dict(self.regimes)
        for key, (n, s, q) in other.regimes.items():
            if key in regimes:
                n0, s0, q0 = regimes[key]
                regimes[key] = (n0 + n, [a + b for a, b in zip(s0, s, strict=True)],
                                [a + b for a, b in zip(q0, q, strict=True)])  # fmt: skip
            else:
                regimes[key] = (n, list(s), list(q))
        decimals = self.decimals if self.regimes else other.decimals
        return SensorStats(tuple(self.columns), regimes, decimals)

    @property
    def count(self) -> int:
        """Rows (or window elements) counted, over every regime."""
        return sum(n for n, _, _ in self.regimes.values())

    # --- results ---------------------------------------------------------------------------
    def mean_std(self) -> dict[tuple[float, ...], tuple[list[float], list[float]]]:
        """Per regime: (mean, population std) per column, each exactly rounded to a float."""
        return {key: moments(*self.regimes[key]) for key in sorted(self.regimes)}

    def normalizer(self) -> Normalizer:
        """The z-scoring these statistics define (a std below 1e-8 becomes 1, as Normalizer.fit)."""
        return normalizer_of(self.columns, self.decimals, self.mean_std())

    # --- wire form -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain strings, lists and ints (integers beyond 64 bits travel as decimal strings)."""
        return {
            "version": STATS_VERSION,
            "columns": list(self.columns),
            "decimals": None if self.decimals is None else list(self.decimals),
            "regimes": [
                {
                    "key": list(k),
                    "count": n,
                    "sum": [str(v) for v in s],
                    "sumsq": [str(v) for v in q],
                }
                for k, (n, s, q) in sorted(self.regimes.items())
            ],  # fmt: skip
        }

    @classmethod
    def from_dict(cls, d: Any) -> SensorStats:
        """Inverse of to_dict, validating every field (DatasetError)."""
        try:
            if not isinstance(d, Mapping) or d.get("version") != STATS_VERSION:
                raise ValueError(f"expected a version-{STATS_VERSION} statistics map")
            columns = tuple(str(c) for c in d["columns"])
            raw_dec = d.get("decimals")
            decimals = None if raw_dec is None else [int(v) for v in raw_dec]
            regimes: dict[tuple[float, ...], tuple[int, list[int], list[int]]] = {}
            for r in d["regimes"]:
                key = tuple(float(v) for v in r["key"])
                n = r["count"]
                sums = [int(str(v)) for v in r["sum"]]
                squares = [int(str(v)) for v in r["sumsq"]]
                if type(n) is not int or n < 1 or key in regimes:
                    raise ValueError("count must be a positive integer, each regime once")
                if len(sums) != len(columns) or len(squares) != len(columns):
                    raise ValueError("sums and squares must have one entry per column")
                if any(v < 0 for v in squares) or not all(math.isfinite(v) for v in key):
                    raise ValueError("negative sum of squares or non-finite regime key")
                regimes[key] = (n, sums, squares)
        except (KeyError, TypeError, ValueError) as exc:
            raise StatisticsError(f"malformed sensor statistics: {exc}") from exc
        out = cls(columns, regimes, decimals)
        out.check()
        return out

    def check(self) -> None:
        """Refuse statistics no partition of float32 rows can have (StatisticsError): columns
        named once, counts in [1, 2**53], |sum| <= count * float32 max, sum of squares
        <= count * float32 max**2, and sum**2 <= count * sum of squares (Cauchy-Schwarz: a
        non-negative variance). Exact integer arithmetic: honest statistics always pass."""
        if len(set(self.columns)) != len(self.columns) or not self.columns:
            raise StatisticsError(
                f"statistics need distinct, named columns, got {list(self.columns)}"
            )
        width = None
        for key, (n, sums, squares) in self.regimes.items():
            where = f"regime {list(key)}"
            if width is not None and len(key) != width:
                raise StatisticsError(f"{where}: regime keys of different lengths")
            width = len(key)
            if type(n) is not int or not 1 <= n <= MAX_COUNT:
                raise StatisticsError(f"{where}: count {n} is not in [1, 2**53]")
            if len(sums) != len(self.columns) or len(squares) != len(self.columns):
                raise StatisticsError(f"{where}: sums and squares must have one entry per column")
            for col, s, q in zip(self.columns, sums, squares, strict=True):
                if abs(s) > n * _MAX_UNITS or not 0 <= q <= n * _MAX_UNITS * _MAX_UNITS:
                    raise StatisticsError(f"{where}, column {col!r}: a sum beyond float32's range")
                if s * s > n * q:
                    raise StatisticsError(f"{where}, column {col!r}: sum**2 > count * sum of "
                                          "squares (a negative variance)")  # fmt: skip


def moments(
    n: Fraction | int, sums: Sequence, squares: Sequence
) -> tuple[list[float], list[float]]:
    """(mean, population std) per column of exact (count, sums, sums of squares) in units of
    2**-149 and 2**-298 (integers, or fractions for down-weighted partitions), exactly rounded."""
    if n <= 0:
        raise DatasetError("a regime has no rows")
    means, stds = [], []
    for s, q in zip(sums, squares, strict=True):
        mean = Fraction(s) / (n * (1 << _SCALE))
        var = Fraction(q) / (n * (1 << (2 * _SCALE))) - mean * mean
        means.append(float(mean))
        stds.append(_sqrt(var))
    return means, stds


def normalizer_of(
    columns: Sequence[str],
    decimals: list[int] | None,
    by_regime: Mapping[tuple[float, ...], tuple[list[float], list[float]]],
) -> Normalizer:
    """The z-scoring of per-regime (mean, std) (a std below 1e-8 becomes 1, as Normalizer.fit)."""
    if not by_regime:
        raise DatasetError("no statistics to normalise with: every partition was empty")
    keys = sorted(by_regime)
    return Normalizer(
        columns=tuple(columns),
        regimes=[list(k) for k in keys],
        mean=[by_regime[k][0] for k in keys],
        std=[[v if v > 1e-8 else 1.0 for v in by_regime[k][1]] for k in keys],
        decimals=None if decimals is None else list(decimals),
    )


def _sqrt(var: Fraction) -> float:
    """The square root of a non-negative fraction, as a float (var < 0 only by rounding: 0)."""
    if var <= 0:
        return 0.0
    return math.sqrt(float(var))


def window_rows(X: np.ndarray) -> np.ndarray:
    """The sensor rows windows (n, window, F) hold, each once.

    make_windows slides one cycle at a time, so a window that continues the one before it
    (its first window-1 rows are that one's last window-1 rows) adds only its last row; any
    other window (a new engine, or one kept apart by subsampling) adds all of its rows.
    """
    x = np.asarray(X, dtype=np.float32)
    if x.ndim != 3:
        raise DatasetError(f"windows must be (n, window, F), got shape {x.shape}")
    if x.shape[0] == 0:
        return x.reshape(0, x.shape[2])
    continues = np.zeros(x.shape[0], dtype=bool)  # one-cycle windows are rows already
    if x.shape[1] > 1:
        continues[1:] = np.all(x[1:, :-1] == x[:-1, 1:], axis=(1, 2))
    fresh = x[~continues].reshape(-1, x.shape[2])
    return np.concatenate([fresh, x[continues, -1]])


def window_stats(
    X: np.ndarray,
    columns: Sequence[str],
    settings: np.ndarray | None = None,
    decimals: Sequence[int] | None = None,
) -> SensorStats:
    """Statistics of the sensor rows in windows (n, window, F), as the datasite has them (each
    row once: see window_rows): per operating regime when each row's ``settings``
    (n, window, S) are given with their regime ``decimals``, else pooled."""
    x = np.asarray(X, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != len(columns):
        raise DatasetError(f"windows must be (n, window, {len(columns)}), got shape {x.shape}")
    if settings is None:
        return SensorStats.of_rows(window_rows(x), columns)
    s = np.asarray(settings, dtype=np.float32)
    if s.ndim != 3 or s.shape[:2] != x.shape[:2]:
        raise DatasetError(f"settings {s.shape} do not match windows {x.shape}")
    rows = window_rows(np.concatenate([x, s], axis=2))  # a row repeats with its settings
    f = x.shape[2]
    return SensorStats.of_rows(rows[:, :f], columns, rows[:, f:], decimals)


def merge_stats(parts: Iterable[SensorStats]) -> SensorStats:
    """The union's statistics from each partition's (exact, order-independent)."""
    out: SensorStats | None = None
    for part in parts:
        out = part if out is None else out.merge(part)
    if out is None:
        raise DatasetError("no partition statistics to merge")
    return out


def named_normalizer(raw: Mapping[str, Any], features: Sequence[str]) -> Normalizer:
    """A campaign's round-0 statistics (columns x1..xF: windows carry no names) named after
    the model's features, in order (DatasetError if the counts differ)."""
    norm = Normalizer.from_dict(raw)
    if len(norm.columns) != len(features):
        raise DatasetError(f"the campaign's statistics cover {len(norm.columns)} features, the "
                           f"model has {len(features)}")  # fmt: skip
    norm.columns = tuple(str(f) for f in features)
    return norm
