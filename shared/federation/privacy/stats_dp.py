"""Round 0 under DP: a factory's sensor statistics through the Gaussian mechanism, accounted.

Adjacency: two partitions of one factory that differ by adding or removing one sensor row (one
cycle of one unit: every sensor value of it). Each row's value of sensor j is clipped to the
campaign's public bounds [lo_j, hi_j] and rescaled to a_j = (x_j - centre_j) / half_width_j in
[-1, 1]; the row then contributes (1, a, a**2) to (count, sums, sums of squares), whose L2 norm
is at most sqrt(1 + 2F) for F sensors: that is the sensitivity, and every one of the 1 + 2F
coordinates gets N(0, (z sqrt(1 + 2F))**2). One release per factory and campaign: its epsilon
at delta is the Gaussian mechanism's (dp-accounting, as the DP-SGD ledger). The noisy
statistics are post-processed (count >= 1, |sum| <= count, sum**2 <= count x sum of squares
<= count**2) so that security's checks pass them; post-processing costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from federation.errors import PrivacyError
from federation.ml.fedstats import SINGLE_REGIME, SensorStats

__all__ = ["StatsNoise", "noisy_row_stats", "stats_epsilon", "stats_noise_for"]

_SCALE = 149  # fedstats' units: sums in 2**-149, squares in 2**-298
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class StatsNoise:
    """The Gaussian mechanism on one factory's statistics: noise multiplier and public bounds."""

    noise_multiplier: float
    bounds: tuple[tuple[float, float], ...]  # per sensor (lo, hi), in the columns' order

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise PrivacyError(f"noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        for lo, hi in self.bounds:
            if not (-_F32_MAX <= lo < hi <= _F32_MAX):
                raise PrivacyError(f"bounds must be float32 numbers with lo < hi, got {(lo, hi)!r}")

    @property
    def sensitivity(self) -> float:
        """L2 norm bound of one row's (1, a, a**2) contribution, a in [-1, 1]**F."""
        return math.sqrt(1 + 2 * len(self.bounds))

    @property
    def std(self) -> float:
        """The noise's standard deviation on every coordinate (in units of the rescaled a)."""
        return self.noise_multiplier * self.sensitivity


def stats_epsilon(noise_multiplier: float, delta: float, method: str = "rdp") -> float:
    """Epsilon at ``delta`` of one release of a factory's statistics at ``noise_multiplier``."""
    from federation.privacy.dpsgd import dpsgd_epsilon

    return dpsgd_epsilon(noise_multiplier, 1.0, 1, delta, method)


def stats_noise_for(epsilon: float, delta: float, method: str = "rdp") -> float:
    """The smallest noise multiplier whose one release costs at most ``epsilon`` at ``delta``."""
    from federation.privacy.accountant import noise_multiplier_for

    return noise_multiplier_for(epsilon, 1, 1.0, delta, method)


def noisy_row_stats(
    rows: np.ndarray, columns: Sequence[str], noise: StatsNoise, rng: np.random.Generator
) -> SensorStats:
    """Pooled statistics of sensor rows (n, F) through the Gaussian mechanism (see module doc)."""
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(columns) or len(noise.bounds) != len(columns):
        raise PrivacyError(
            f"noisy statistics need rows (n, {len(noise.bounds)}) for {len(columns)} columns, "
            f"got {x.shape}"
        )
    lo, hi = (np.array(b, dtype=np.float64) for b in zip(*noise.bounds, strict=True))
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    a = (np.clip(x, lo, hi) - centre) / half
    f = len(columns)
    draw = rng.normal(0.0, noise.std, size=1 + 2 * f)
    n = max(1, round(x.shape[0] + draw[0]))
    sums = np.clip(a.sum(axis=0) + draw[1 : 1 + f], -n, n)
    squares = np.clip((a * a).sum(axis=0) + draw[1 + f :], 0, n)
    out_s, out_q = [], []
    for j in range(f):
        s_a, q_a = Fraction(float(sums[j])), Fraction(float(squares[j]))
        q_a = max(q_a, s_a * s_a / n)  # a non-negative variance
        c, h = Fraction(float(centre[j])), Fraction(float(half[j]))
        s_x = n * c + h * s_a  # back to sensor units: x = centre + half * a
        q_x = n * c * c + 2 * c * h * s_a + h * h * q_a
        s_int = round(s_x * (1 << _SCALE))
        q_int = math.ceil(q_x * (1 << (2 * _SCALE)))
        out_s.append(s_int)
        out_q.append(max(q_int, -(-s_int * s_int // n)))  # exact Cauchy-Schwarz after rounding
    return SensorStats(tuple(columns), {SINGLE_REGIME: (n, out_s, out_q)}, [])
