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
