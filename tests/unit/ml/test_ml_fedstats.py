"""Federated normalisation statistics: exact merge, equal to the central statistics of the union."""

from __future__ import annotations

import numpy as np
import pytest
from federation.ml.data import DatasetError, Normalizer, synthetic_fleet
from federation.ml.fedstats import SensorStats, merge_stats, window_stats

COLUMNS = ("a", "b", "c")


def _rows(seed: int, n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 1e-3, 1e3])
    return (rng.normal(50.0, 3.0, size=(n, 3)) * scale).astype(np.float32)


def test_merged_partition_statistics_equal_the_central_statistics_of_the_union_exactly():
    parts = [_rows(s, n) for s, n in ((1, 400), (2, 37), (3, 1200), (4, 1))]
    union = np.concatenate(parts)
    merged = merge_stats(SensorStats.of_rows(p, COLUMNS) for p in parts)
    central = SensorStats.of_rows(union, COLUMNS)
    assert merged == central
    assert merged.normalizer().to_dict() == central.normalizer().to_dict()
    # in any order, and through the wire form
    reordered = merge_stats(SensorStats.from_dict(SensorStats.of_rows(p, COLUMNS).to_dict())
                            for p in reversed(parts))  # fmt: skip
    assert reordered.normalizer().to_dict() == central.normalizer().to_dict()


def test_exact_statistics_agree_with_numpy_float64_mean_and_std():
    union = np.concatenate([_rows(5), _rows(6)])
    ((mean, std),) = SensorStats.of_rows(union, COLUMNS).mean_std().values()
    x = union.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=0), rtol=1e-9)


def test_negative_zero_and_subnormal_values_are_summed_exactly():
    from fractions import Fraction

    tiny = np.float32(1e-45)  # the smallest float32 subnormal, 2**-149
    rows = np.array([[-3.5, 0.0, tiny], [1.25, -0.0, tiny], [-1e30, 7.0, 2 * tiny]], np.float32)
    n, sums, squares = SensorStats.of_rows(rows, COLUMNS).regimes[(0.0,)]
    assert n == 3
    for j in range(3):
        exact = [Fraction(float(v)) for v in rows[:, j]]
        assert Fraction(sums[j], 2**149) == sum(exact)
        assert Fraction(squares[j], 2**298) == sum(v * v for v in exact)


def test_per_regime_statistics_match_the_central_normaliser_fit():
    data = synthetic_fleet(n_engines=12, seed=3, n_regimes=3)
    x, s = data.train.sensors[:, :4], data.train.settings
    cols = ("s1", "s2", "s3", "s4")
    half = len(x) // 2
    merged = SensorStats.of_rows(x[:half], cols, s[:half]).merge(
        SensorStats.of_rows(x[half:], cols, s[half:])
    )
    assert len(merged.regimes) == 3
    fed = merged.normalizer()
    central = Normalizer().fit(x, s, cols)
    assert fed.regimes == central.regimes
    np.testing.assert_allclose(fed.mean, central.mean, rtol=1e-9)
    np.testing.assert_allclose(fed.std, central.std, rtol=1e-7)
    np.testing.assert_allclose(fed.transform(x, s), central.transform(x, s), atol=1e-5)


def test_window_statistics_pool_every_value_and_normalise_windows_without_settings():
    X = np.stack([_rows(7, 30), _rows(8, 30)])  # two windows (2, 30, 3)
    stats = window_stats(X, COLUMNS)
    assert stats.count == 60 and stats.decimals == []
    norm = Normalizer.from_dict(stats.normalizer().to_dict())
    z = norm.transform_windows(X)
    np.testing.assert_allclose(z.reshape(-1, 3).mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.reshape(-1, 3).std(axis=0), 1.0, atol=1e-4)
    # the same statistics z-score rows whatever their settings (one pooled regime)
    rows = X.reshape(-1, 3)
    np.testing.assert_allclose(norm.transform(rows, np.ones((60, 3))), z.reshape(-1, 3), atol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 2},
        {
            "version": 1,
            "columns": ["a"],
            "regimes": [{"key": [0.0], "count": 0, "sum": ["1"], "sumsq": ["1"]}],
        },
        {
            "version": 1,
            "columns": ["a"],
            "regimes": [{"key": [0.0], "count": 2, "sum": ["x"], "sumsq": ["1"]}],
        },
        {
            "version": 1,
            "columns": ["a"],
            "regimes": [{"key": [0.0], "count": 2, "sum": ["1", "2"], "sumsq": ["1"]}],
        },
        {
            "version": 1,
            "columns": ["a"],
            "regimes": [{"key": [0.0], "count": 2, "sum": ["1"], "sumsq": ["-1"]}],
        },
        "not a map",
    ],
)
def test_malformed_statistics_are_a_dataset_error(bad):
    with pytest.raises(DatasetError, match="malformed sensor statistics"):
        SensorStats.from_dict(bad)


def test_statistics_over_other_columns_do_not_merge():
    with pytest.raises(DatasetError, match="cannot merge"):
        SensorStats.of_rows(_rows(1), COLUMNS).merge(SensorStats.of_rows(_rows(2), ("x", "y", "z")))


def test_windows_of_a_multi_regime_normaliser_are_refused():
    data = synthetic_fleet(n_engines=6, seed=1, n_regimes=2)
    norm = Normalizer().fit(data.train.sensors[:, :2], data.train.settings, ("s1", "s2"))
    with pytest.raises(DatasetError, match="no operating settings"):
        norm.transform_windows(np.zeros((1, 30, 2), np.float32))


def test_window_statistics_count_each_row_of_sliding_windows_once():
    from federation.ml.data import make_windows
    from federation.ml.fedstats import window_rows

    data = synthetic_fleet(n_engines=5, seed=2)
    rows = data.train.sensors[:, :3]
    X, _, _ = make_windows(rows, data.train.units, window=30)
    assert sorted(map(tuple, window_rows(X))) == sorted(map(tuple, rows))
    assert window_stats(X, COLUMNS) == SensorStats.of_rows(rows, COLUMNS)
    # windows kept apart (subsampled) contribute every row they hold
    assert window_rows(X[::40]).shape[0] == X[::40].shape[0] * 30


def test_window_statistics_per_regime_equal_the_row_statistics_and_z_score_each_regime():
    from federation.ml.data import make_windows

    data = synthetic_fleet(n_engines=8, seed=4, n_regimes=3)
    cols = ("s1", "s2", "s3")
    x, s, units = data.train.sensors[:, :3], data.train.settings, data.train.units
    X = make_windows(x, units, None, 5)[0]
    S = make_windows(s, units, None, 5)[0]
    stats = window_stats(X, cols, S, [0, 1, 0])
    assert stats == SensorStats.of_rows(x, cols, s, [0, 1, 0])  # each row once, in its regime
    assert len(stats.regimes) == 3
    norm = stats.normalizer()
    z = norm.transform_windows(X, S)
    np.testing.assert_allclose(z.reshape(-1, 3), norm.transform(X.reshape(-1, 3), S.reshape(-1, 3)))
    with pytest.raises(DatasetError, match="carry no operating settings"):
        norm.transform_windows(X)  # three regimes cannot z-score windows without settings
    pooled = window_stats(X, cols)  # an old partition: no settings, one regime
    assert list(pooled.regimes) == [(0.0,)] and pooled.decimals == []
    np.testing.assert_allclose(pooled.normalizer().transform_windows(X, S),
                               pooled.normalizer().transform_windows(X))  # fmt: skip


def test_statistics_of_many_interleaved_regimes_equal_each_regime_s_own():
    rng = np.random.default_rng(7)
    rows = _rows(5, 3000)
    settings = rng.integers(0, 300, size=(3000, 1)).astype(np.float32)  # ~300 regimes, mixed
    stats = SensorStats.of_rows(rows, COLUMNS, settings, (0,))
    assert len(stats.regimes) == len(np.unique(settings))
    for value in np.unique(settings)[::37]:
        (own,) = SensorStats.of_rows(rows[settings[:, 0] == value], COLUMNS).regimes.values()
        assert stats.regimes[(float(value),)] == own
