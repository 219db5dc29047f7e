"""Partition validation and the public mock (same shapes, no real rows)."""

from __future__ import annotations

import numpy as np
import pytest
from federation.datasite.partition import check_partition, make_mock
from federation.errors import DatasiteError


def _part(n=20):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5, 3)), rng.uniform(0, 125, n)


def test_when_a_partition_is_valid__it_comes_back_as_float32_arrays():
    X, y = check_partition(dict(zip("Xy", _part(), strict=True)))
    assert X.dtype == y.dtype == np.float32 and X.shape == (20, 5, 3)


@pytest.mark.parametrize(
    "bad",
    [
        {"X": np.zeros((4, 5, 3))},
        {"X": np.zeros((4, 5)), "y": np.zeros(4)},
        {"X": np.zeros((4, 5, 3)), "y": np.zeros(3)},
        {"X": np.zeros((0, 5, 3)), "y": np.zeros(0)},
        {"X": np.full((2, 5, 3), np.nan), "y": np.zeros(2)},
        {"X": [["a"]], "y": [1]},
        "not a partition",
    ],
)
def test_when_a_partition_is_invalid__a_datasite_error_says_why(bad):
    with pytest.raises(DatasiteError):
        check_partition(bad)


def test_when_a_mock_is_made__shapes_match_and_no_real_row_or_label_appears():
    X, y = check_partition(_part())
    mX, my = make_mock(X, y, seed=1)
    assert mX.shape == X.shape and my.shape == y.shape and mX.dtype == np.float32
    assert not any(np.array_equal(a, b) for a in mX for b in X)
    assert not np.isin(my, y).any()
    assert y.min() <= my.min() and my.max() <= y.max()


def test_when_a_mock_is_made_of_windows_with_settings__they_are_one_stand_in_regime():
    """PySyft runs every approved job on the mock too: random settings would be thousands of
    regimes, and the round-0 statistics job on them took a minute per datasite."""
    from federation.ml.data import regime_ids

    X, y = check_partition(_part())
    settings = np.stack([np.full(X.shape[:2], v, np.float32) for v in (35.0, 0.84, 60.0)], axis=2)
    asset = np.concatenate([X, settings], axis=2)
    mX, my = make_mock(asset, y, seed=1, settings_channels=3)
    assert mX.shape == asset.shape and mX.dtype == np.float32
    mock_settings = mX[..., -3:].reshape(-1, 3)
    assert len(np.unique(regime_ids(mock_settings, (0, 2, 0)), axis=0)) == 1
    assert not np.isin(mock_settings, settings).any()
    sensors = mX[..., :-3]
    assert sensors.std() > 0.5 and not any(np.array_equal(a, b) for a in sensors for b in X)


def test_when_a_partition_keeps_settings__they_are_checked_and_split_off_the_features_asset(
    monkeypatch,
):
    from federation.datasite.partition import (
        ENV_REGIME_DECIMALS,
        check_settings,
        job_windows,
        regime_decimals,
    )

    X, y = _part()
    S = np.full((20, 5, 2), 100.0)
    settings, dec = check_settings({"X": X, "y": y, "settings": S, "decimals": [0, 1]}, X)
    assert settings.dtype == np.float32 and dec == (0, 1)
    assert check_settings({"X": X, "y": y}, X) == (None, ())  # an old partition: pooled
    for bad in ({"settings": S, "decimals": [0]}, {"settings": S[:3], "decimals": [0, 1]},
                {"settings": S * np.nan, "decimals": [0, 1]},
                {"settings": S, "decimals": [0, 9]}):  # fmt: skip
        with pytest.raises(DatasiteError):
            check_settings({"X": X, "y": y, **bad}, X)
    asset = np.concatenate([X, S], axis=2)
    monkeypatch.setenv(ENV_REGIME_DECIMALS, "[0, 1]")
    sensors, back = job_windows(asset, regime_decimals())
    assert np.array_equal(sensors, X) and np.array_equal(back, S)
    monkeypatch.setenv(ENV_REGIME_DECIMALS, "")
    assert job_windows(asset, regime_decimals())[1] is None
    monkeypatch.setenv(ENV_REGIME_DECIMALS, "not json")
    with pytest.raises(DatasiteError):
        regime_decimals()
