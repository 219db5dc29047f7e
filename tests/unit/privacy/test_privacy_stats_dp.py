"""Round 0 under DP: the Gaussian mechanism on a factory's statistics, calibrated and accounted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from federation.errors import ConfigError, PrivacyError
from federation.ml.fedstats import SensorStats
from federation.privacy.stats_dp import StatsNoise, noisy_row_stats, stats_epsilon, stats_noise_for

COLUMNS = ("a", "b", "c")
BOUNDS = ((0.0, 100.0), (-1.0, 1.0), (500.0, 700.0))


class _NoNoise:
    """A generator that draws zeros: what is left is the clipping (unit tier only)."""

    def normal(self, loc, scale, size):
        return np.zeros(size)


def _a_space(stats: SensorStats) -> np.ndarray:
    """(count, sums, sums of squares) of the rescaled a = (x - centre) / half_width."""
    ((n, s, q),) = stats.regimes.values()
    out = [float(n)]
    lo, hi = np.array(BOUNDS).T
    c, h = (lo + hi) / 2, (hi - lo) / 2
    sums = [v / 2**149 for v in s]
    squares = [v / 2**298 for v in q]
    out += [(sums[j] - n * c[j]) / h[j] for j in range(3)]
    out += [(squares[j] - 2 * c[j] * sums[j] + n * c[j] ** 2) / h[j] ** 2 for j in range(3)]
    return np.array(out)


@pytest.mark.parametrize("epsilon, delta", [(0.5, 1e-5), (1.0, 1e-5), (4.0, 1e-6)])
def test_the_noise_calibrated_for_epsilon_spends_epsilon(epsilon, delta):
    z = stats_noise_for(epsilon, delta)
    assert stats_epsilon(z, delta) == pytest.approx(epsilon, rel=1e-3)
    assert stats_epsilon(z, delta) <= epsilon * (1 + 1e-4)
    assert stats_epsilon(z * 1.1, delta) < epsilon  # more noise, less spent


def test_one_added_row_moves_the_released_vector_by_at_most_the_sensitivity():
    rng = np.random.default_rng(0)
    rows = rng.uniform(-1e3, 1e3, size=(50, 3))
    mech = StatsNoise(1.0, BOUNDS)
    base = _a_space(noisy_row_stats(rows, COLUMNS, mech, _NoNoise()))
    worst = 0.0
    for extra in ([1e9, 1e9, 1e9], [-1e9, -1e9, -1e9], [50.0, 0.0, 600.0], [0.0, 1.0, 700.0]):
        more = _a_space(noisy_row_stats(np.vstack([rows, extra]), COLUMNS, mech, _NoNoise()))
        worst = max(worst, float(np.linalg.norm(more - base)))
    assert worst <= mech.sensitivity + 1e-6
    assert worst == pytest.approx(mech.sensitivity, rel=1e-6)  # a corner row reaches it


def test_the_noise_on_every_coordinate_has_std_z_times_the_sensitivity():
    rows = np.random.default_rng(1).uniform(0.0, 1.0, size=(2000, 3)) * [100, 2, 200] + [0, -1, 500]
    mech = StatsNoise(0.7, BOUNDS)
    exact = _a_space(noisy_row_stats(rows, COLUMNS, mech, _NoNoise()))
    draws = np.array([_a_space(noisy_row_stats(rows, COLUMNS, mech, np.random.default_rng(s))) - exact
                      for s in range(400)])  # fmt: skip
    np.testing.assert_allclose(draws.std(axis=0), mech.std, rtol=0.15)
    np.testing.assert_allclose(draws.mean(axis=0), 0.0, atol=4 * mech.std / math.sqrt(400))


@pytest.mark.parametrize("n", [0, 1, 3])
def test_noisy_statistics_of_tiny_partitions_still_pass_security(n):
    rows = np.full((n, 3), [100.0, 1.0, 700.0])
    for seed in range(50):
        stats = noisy_row_stats(rows, COLUMNS, StatsNoise(5.0, BOUNDS), np.random.default_rng(seed))
        assert SensorStats.from_dict(stats.to_dict()) == stats  # count >= 1, variance >= 0


def test_at_epsilon_1_a_factory_of_6000_rows_keeps_its_mean_and_std_close():
    rng = np.random.default_rng(2)
    rows = rng.normal([50.0, 0.0, 600.0], [5.0, 0.1, 10.0], size=(6000, 3))
    z = stats_noise_for(1.0, 1e-5)
    exact = SensorStats.of_rows(rows.astype(np.float32), COLUMNS).normalizer()
    noisy = noisy_row_stats(
        rows.astype(np.float32), COLUMNS, StatsNoise(z, BOUNDS), rng
    ).normalizer()
    shift = np.abs(np.array(noisy.mean[0]) - exact.mean[0]) / exact.std[0]
    ratio = np.array(noisy.std[0]) / exact.std[0]
    assert shift.max() < 0.15 and np.abs(ratio - 1).max() < 0.25


def test_bad_mechanisms_and_campaigns_are_refused():
    from federation.campaign import CampaignConfig

    for bad in ((0.0, BOUNDS), (1.0, ((1.0, 1.0),)), (1.0, ((0.0, float("inf")),))):
        with pytest.raises(PrivacyError):
            StatsNoise(*bad)
    with pytest.raises(ConfigError, match="one \\[lo, hi\\] per feature"):
        CampaignConfig.from_payload({"training": {"n_features": 3},
                                     "stats_privacy": {"enabled": True, "bounds": [[0, 1]]}})  # fmt: skip
    ok = CampaignConfig.from_payload({"training": {"n_features": 3},
                                      "stats_privacy": {"enabled": True, "bounds": [[0, 1]] * 3}})  # fmt: skip
    job = ok.stats_privacy.job_config()
    assert stats_epsilon(job["noise_multiplier"], ok.stats_privacy.delta) == pytest.approx(
        1.0, rel=1e-3
    )
